package lab_test

import (
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	testenv.Golden(t, filepath.Join("testdata", name), got, *update)
}

const confAlpha = `agent_id: alpha
server_address: http://testflinger:8000
job_queues:
  - alpha
polling_interval: 10
`

const confBeta = `agent_id: beta
server_address: http://testflinger:8000
job_queues: [beta]
`

const baseCompose = `services:
  mosquitto:
    image: eclipse-mosquitto:2
    restart: unless-stopped
    ports: ["1883:1883"]
  redis:
    image: redis:7
    volumes:
      - redis-data:/data
volumes:
  redis-data: {}
`

// baseLab is a valid lab that each case changes.
func baseLab() fstest.MapFS {
	return fstest.MapFS{
		"sut/alpha.conf":        {Data: []byte(confAlpha)},
		"sut/alpha_snappy.yaml": {Data: []byte("device_ip: 10.0.0.1\nagent_name: alpha\n")},
		"sut/alpha.yaml":        {Data: []byte("job_queue: alpha\ntest_data:\n  test_cmds: echo hi\n")},
		"sut/beta.conf":         {Data: []byte(confBeta)},
		"sut/beta_snappy.yaml":  {Data: []byte("device_ip: 10.0.0.2\n")},
		"docker-compose.yaml":   {Data: []byte(baseCompose)},
	}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		name    string
		files   map[string]string // "" deletes
		symlink string
		wantErr bool
	}{
		{name: "valid", files: nil},
		{name: "conf-misspelt-key", wantErr: true, files: map[string]string{
			"sut/alpha.conf": strings.Replace(confAlpha, "job_queues:", "job_queue:", 1)}},
		{name: "conf-missing-required", wantErr: true, files: map[string]string{
			"sut/beta.conf": "agent_id: beta\n"}},
		{name: "conf-wrong-types", wantErr: true, files: map[string]string{
			"sut/beta.conf": confBeta + "polling_interval: soon\nlogging_quiet: maybe\njob_queues: beta\n"}},
		{name: "conf-bad-yaml", wantErr: true, files: map[string]string{
			"sut/beta.conf": "agent_id: beta\njob_queues: [beta\n"}},
		{name: "conf-not-a-mapping", wantErr: true, files: map[string]string{
			"sut/beta.conf": "- beta\n"}},
		{name: "agent-id-mismatch", files: map[string]string{
			"sut/beta.conf": strings.Replace(confBeta, "agent_id: beta", "agent_id: gamma", 1)}},
		{name: "duplicate-agent-id", wantErr: true, files: map[string]string{
			"sut/beta.conf": strings.Replace(confBeta, "agent_id: beta", "agent_id: alpha", 1)}},
		{name: "duplicate-device-ip", wantErr: true, files: map[string]string{
			"sut/beta_snappy.yaml": "device_ip: 10.0.0.1\n"}},
		{name: "bad-device-ip", wantErr: true, files: map[string]string{
			"sut/beta_snappy.yaml": "device_ip: 10.0.0.300 \nserial_port: ttyS0\nfrobnicate: true\n"}},
		{name: "name-collides-with-service", wantErr: true, files: map[string]string{
			"sut/redis.conf": strings.ReplaceAll(confBeta, "beta", "redis")}},
		{name: "invalid-sut-name", wantErr: true, files: map[string]string{
			"sut/bad+name.conf": confBeta}},
		{name: "stray-files", files: map[string]string{
			"sut/README.md": "notes", "sut/.DS_Store": "x", "sut/gamma_snappy.yaml": "device_ip: 10.0.0.9\n"}},
		{name: "file-too-large", wantErr: true, files: map[string]string{
			"sut/beta_snappy.yaml": "device_ip: 10.0.0.2\n# " + strings.Repeat("x", lab.MaxFileSize) + "\n"}},
		{name: "symlink", wantErr: true, symlink: "sut/beta_snappy.yaml"},
		{name: "job-invalid", wantErr: true, files: map[string]string{
			"sut/alpha.yaml": "provision_data: {distro: jammy}\ntest_data:\n  test_cmd: echo\n  test_password: hunter2\n"}},
		{name: "lab-yaml-misspelt-key", wantErr: true, files: map[string]string{
			"lab.yaml": "name: lab1\nagents:\n  restart: always\n  memroy: 1g\nprune:\n  max_fraction: 2\n"}},
		{name: "lab-yaml-paths-escape", wantErr: true, files: map[string]string{
			"lab.yaml": "stack: ../compose.yaml\nagents:\n  dir: /etc/sut\n  files:\n    conf: relative/path\n"}},
		{name: "lab-yaml-bad-values", wantErr: true, files: map[string]string{
			"lab.yaml": "name: \"my lab\"\nagents:\n  memory: lots\n  update:\n    start_timeout: 10\n  restart: sometimes\n  networks:\n    nowhere: {}\n"}},
		{name: "override-invalid", wantErr: true, files: map[string]string{
			"sut/beta.lab.yaml": "enabled: yes please\nimage: my image\nnetworks:\n  missing: {ipv4_address: 10.0.0.5}\n"}},
		{name: "compose-unsupported-keys", wantErr: true, files: map[string]string{
			"docker-compose.yaml": "version: \"3.8\"\n" + strings.Replace(baseCompose, "volumes:\n  redis-data", "  cache:\n    image: memcached\n    deploy:\n      replicas: 2\n    imagee: typo\n    logging:\n      driver: json-file\nvolumes:\n  redis-data", 1) + "secrets:\n  s: {file: ./s}\n"}},
		{name: "compose-undeclared-refs", wantErr: true, files: map[string]string{
			"docker-compose.yaml": "services:\n  web:\n    image: nginx\n    networks: [front]\n    volumes: [\"cache:/cache\", \"./missing.conf:/etc/x.conf\"]\n    env_file: web.env\n"}},
		{name: "compose-dependencies", wantErr: true, files: map[string]string{
			"docker-compose.yaml": "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_healthy}\n  b:\n    image: y\n    depends_on: [a]\n  c:\n    build: ./nowhere\n"}},
		{name: "compose-unset-variable", files: map[string]string{
			"docker-compose.yaml": "name: old\nservices:\n  a:\n    image: \"registry/${TAG}\"\n    command: [echo, \"$${ESCAPED}\"]\n    environment:\n      FROM_HOST:\n      GIVEN: \"${GIVEN:-yes}\"\n"}},
		{name: "static-addresses", wantErr: true, files: map[string]string{
			"docker-compose.yaml": "services:\n  api:\n    image: x\n    networks:\n      lab: {ipv4_address: 10.5.0.2}\n      plain: {}\nnetworks:\n  lab:\n    ipam:\n      config: [{subnet: 10.5.0.0/24}]\n  plain: {}\n",
			"sut/alpha.lab.yaml":  "networks:\n  lab: {ipv4_address: 10.5.0.2}\n",
			"sut/beta.lab.yaml":   "networks:\n  plain: {ipv4_address: 10.6.0.2}\n"}},
		{name: "secret-override-and-healthcheck", wantErr: true, files: map[string]string{
			"lab.yaml":          "agents:\n  secrets: {TOKEN: tf-token}\n  env: {\"BAD NAME\": x}\n  healthcheck:\n    test: [labsync-agent, healthcheck]\n  networks:\n    default: {ipv4_address: 10.0.0.9}\n  restart: on-failure:3\nmqtt:\n  prefix: lab/#\n",
			"sut/beta.lab.yaml": "env:\n  TOKEN: committed-in-git\n"}},
		{name: "compose-bad-yaml", wantErr: true, files: map[string]string{
			"docker-compose.yaml": "services:\n  a:\n\timage: x\n"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fsys := baseLab()
			for p, c := range tc.files {
				if c == "" {
					delete(fsys, p)
					continue
				}
				fsys[p] = &fstest.MapFile{Data: []byte(c)}
			}
			if tc.symlink != "" {
				fsys[tc.symlink] = &fstest.MapFile{Data: []byte("/etc/passwd"), Mode: fs.ModeSymlink}
			}
			l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
			// Errors in SUT files hold those SUTs rather than fail Load.
			if (err != nil || l.Diagnostics.HasErrors()) != tc.wantErr {
				t.Fatalf("Load error = %v, want errors %v\n%s", err, tc.wantErr, l.Diagnostics)
			}
			golden(t, "validate/"+tc.name+".golden", l.Diagnostics.String())
		})
	}
}

// An existing lab repository of the old kind, with only sut/ and a
// docker-compose.yaml, is valid and gets sensible defaults.
func TestDefaultsWithoutLabYAML(t *testing.T) {
	l, err := lab.Load(baseLab(), lab.LoadOptions{DefaultName: "lab-host-1"})
	if err != nil {
		t.Fatal(err)
	}
	d := lab.Compile(l, lab.CompileOptions{})
	if d.Lab != "lab-host-1" || len(d.Containers) != 4 {
		t.Fatalf("lab %s with %d containers", d.Lab, len(d.Containers))
	}
	var alpha *lab.ContainerSpec
	for i := range d.Containers {
		if d.Containers[i].Name == "alpha" {
			alpha = &d.Containers[i]
		}
	}
	if alpha.ContainerName != "alpha" || alpha.Hostname != "alpha" || alpha.Image != lab.DefaultAgentImage || alpha.Restart != "always" {
		t.Errorf("alpha = %+v", alpha)
	}
	if got := strings.Join(alpha.Command, " "); got != "/opt/labsync/labsync-agent run --sut alpha -- testflinger-agent -c /data/testflinger-agent/sut/alpha.conf" {
		t.Errorf("command = %s", got)
	}
	if h := alpha.Healthcheck; h == nil || strings.Join(h.Test, " ") != "CMD /opt/labsync/labsync-agent healthcheck" {
		t.Errorf("healthcheck = %+v", h)
	}
	var paths []string
	for _, f := range alpha.Files {
		paths = append(paths, f.Path)
	}
	if got := strings.Join(paths, " "); got != "/data/testflinger-agent/sut/alpha.conf /data/snappy-device-agents/sut/alpha_snappy.yaml" {
		t.Errorf("files = %s", got)
	}
	if len(alpha.Networks) != 1 || alpha.Networks[0].Network != "lab-host-1_default" {
		t.Errorf("networks = %+v", alpha.Networks)
	}
	if !d.Prune.Enabled || d.Prune.MaxFraction != 0.5 || d.Update.Parallelism != 4 {
		t.Errorf("policies = %+v %+v", d.Prune, d.Update)
	}
}

func TestLabRepoExampleIsValid(t *testing.T) {
	l, err := lab.Load(os.DirFS("../lab-repo-example"), lab.LoadOptions{DefaultName: "lab-repo-example"})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	if len(l.SUTs) < 4 {
		t.Errorf("lab-repo-example has %d SUTs, want at least 4", len(l.SUTs))
	}
	if _, warns := l.Diagnostics.Count(); warns > 0 {
		t.Errorf("lab-repo-example has warnings:\n%s", l.Diagnostics)
	}
}
