package lab_test

import (
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
)

// Each thing a lab may ask of the host is refused by the default policy,
// with the line and the setting that allows it, and allowed by that
// setting.
func TestHostPolicy(t *testing.T) {
	cases := []struct {
		name    string
		service string // the service's keys, indented by four spaces
		top     string // top-level compose keys after services
		line    int
		setting string
		allow   func(*lab.Policy)
	}{
		{"privileged", "    privileged: true\n", "", 4, "--allow-privileged", func(p *lab.Policy) { p.Privileged = true }},
		{"capability", "    cap_add: [NET_ADMIN]\n", "", 4, "--allow-cap-add NET_ADMIN", func(p *lab.Policy) { p.Capabilities = []string{"net_admin"} }},
		{"any capability", "    cap_add: [SYS_ADMIN]\n", "", 4, "--allow-cap-add SYS_ADMIN", func(p *lab.Policy) { p.Capabilities = []string{"ALL"} }},
		{"device", "    devices: [\"/dev/ttyUSB0:/dev/ttyUSB0\"]\n", "", 4, "--allow-devices /dev/ttyUSB0", func(p *lab.Policy) { p.Devices = []string{"/dev/ttyUSB"} }},
		{"host root", "    volumes: [\"/:/host\"]\n", "", 4, "--allow-bind-paths /", func(p *lab.Policy) { p.BindPaths, p.DockerSocket = []string{"/"}, []string{"*"} }},
		{"host path", "    volumes: [\"/srv/lab/backups:/backups\"]\n", "", 4, "--allow-bind-paths /srv/lab/backups", func(p *lab.Policy) { p.BindPaths = []string{"/srv/lab"} }},
		{"docker socket", "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n", "", 4, "--allow-docker-socket app=app", func(p *lab.Policy) { p.DockerSocket = []string{"app"} }},
		{"docker socket pinned to an image", "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n", "", 4, "--allow-docker-socket app=app", func(p *lab.Policy) { p.DockerSocket = []string{"app=app"} }},
		{"a folder holding the docker socket", "    volumes: [\"/run:/host-run\"]\n", "", 4, "--allow-docker-socket", func(p *lab.Policy) { p.DockerSocket, p.BindPaths = []string{"*"}, []string{"/run"} }},
		{"network driver", "", "networks:\n  lan:\n    driver: macvlan\n", 6, "--allow-network-drivers bridge,macvlan", func(p *lab.Policy) { p.NetworkDrivers = []string{"bridge", "macvlan"} }},
		{"network driver options", "", "networks:\n  lan:\n    driver_opts: {com.docker.network.bridge.name: docker0}\n", 6, "--allow-network-driver-opts", func(p *lab.Policy) { p.NetworkDriverOpts = true }},
		{"docker socket under /run", "    volumes: [{type: bind, source: /run/docker.sock, target: /s}]\n", "", 4, "--allow-docker-socket", func(p *lab.Policy) { p.DockerSocket = []string{"*"} }},
		{"privileged port", "    ports: [\"80:8080\"]\n", "", 4, "--allow-ports", func(p *lab.Policy) { p.Ports = "80,1024-65535" }},
		{"port range", "    ports: [\"1000-1030:8000-8030\"]\n", "", 4, "--allow-ports", func(p *lab.Policy) { p.Ports = "1-65535" }},
		{"volume driver options", "    volumes: [data:/data]\n", "volumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /}\n", 7, "--allow-volume-driver-opts", func(p *lab.Policy) { p.VolumeDriverOpts = true }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			compose := "services:\n  app:\n    image: app:1\n" + tc.service + tc.top
			fsys := fstest.MapFS{
				"sut/alpha.conf":      {Data: []byte(confAlpha)},
				"docker-compose.yaml": {Data: []byte(compose)},
			}
			l, err := lab.Load(fsys, lab.LoadOptions{})
			if err == nil {
				t.Fatalf("the default policy allowed:\n%s", compose)
			}
			found := false
			for _, d := range l.Diagnostics {
				if d.File == "docker-compose.yaml" && d.Line == tc.line && strings.Contains(d.Message, tc.setting) && strings.Contains(d.Message, "host policy") {
					found = true
				}
			}
			if !found {
				t.Fatalf("no docker-compose.yaml:%d error naming %q in:\n%s", tc.line, tc.setting, l.Diagnostics)
			}
			pol := lab.DefaultPolicy()
			tc.allow(&pol)
			if l, err := lab.Load(fsys, lab.LoadOptions{Policy: &pol}); err != nil {
				t.Fatalf("refused with the setting:\n%s", l.Diagnostics)
			}
		})
	}
}

// A Docker socket exception that names an image holds for that image, run
// as the image runs it: a service that only takes the name, or changes
// its entrypoint, does not get the socket.
func TestDockerSocketExceptionIsPinned(t *testing.T) {
	for _, tc := range []struct {
		name, service string
		ok            bool
	}{
		{"portainer", "    image: portainer/portainer-ce:2.21.4\n    command: [\"-H\", \"unix:///var/run/docker.sock\"]\n", true},
		{"portainer from docker.io", "    image: docker.io/portainer/portainer-ce@sha256:" + strings.Repeat("a", 64) + "\n", true},
		{"an impostor", "    image: attacker/tool:1\n", false},
		{"a lookalike image", "    image: portainer/portainer-ce-evil:1\n", false},
		{"another entrypoint", "    image: portainer/portainer-ce:2.21.4\n    entrypoint: [/docker]\n", false},
		{"built from the repository", "    build: ./tool\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compose := "services:\n  portainer:\n" + tc.service + "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"
			fsys := fstest.MapFS{
				"sut/alpha.conf":      {Data: []byte(confAlpha)},
				"docker-compose.yaml": {Data: []byte(compose)},
				"tool/Dockerfile":     {Data: []byte("FROM scratch\n")},
			}
			pol := lab.DefaultPolicy()
			pol.DockerSocket = []string{"portainer=portainer/portainer-ce"}
			l, err := lab.Load(fsys, lab.LoadOptions{Policy: &pol})
			if (err == nil) != tc.ok {
				t.Fatalf("allowed = %v, want %v:\n%s", err == nil, tc.ok, l.Diagnostics)
			}
		})
	}
}

// The example lab keeps to the default policy.
func TestExampleLabKeepsToTheDefaultPolicy(t *testing.T) {
	l, err := lab.Load(os.DirFS("../lab-repo-example"), lab.LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	if got := lab.DefaultPolicy().DockerSocket; len(got) != 0 {
		t.Errorf("the default policy gives the Docker socket to %v", got)
	}
}

func TestParsePorts(t *testing.T) {
	for _, bad := range []string{"0", "70000", "9-8", "x", "1-"} {
		if _, err := lab.ParsePorts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	r, err := lab.ParsePorts("80, 443,8000-9000")
	if err != nil || len(r) != 3 || r[2] != [2]int{8000, 9000} {
		t.Errorf("%v %v", r, err)
	}
}

// A named volume's source that is a host path, and a network named after
// one of Docker's own (host, bridge, none), are errors at validate time.
func TestHostNamesAreRefused(t *testing.T) {
	for _, tc := range []struct{ name, compose, msg string }{
		{"volume source is a host path", "services:\n  a:\n    image: a\n    volumes: [{type: volume, source: /root, target: /r}]\n", "named volume"},
		{"network named host", "services:\n  a:\n    image: a\n    networks: [n]\nnetworks:\n  n:\n    name: host\n", "Docker's own"},
		{"network named for another container's namespace", "services:\n  a:\n    image: a\n    networks: [n]\nnetworks:\n  n:\n    name: \"container:victim\"\n", "not a valid network name"},
		{"volume named by interpolation", "services:\n  a:\n    image: a\n    volumes: [\"${NOPE:-their-volume}:/v\"]\n", "not declared"},
		{"network named none", "services:\n  a:\n    image: a\n    networks: [n]\nnetworks:\n  n:\n    name: none\n", "Docker's own"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := fstest.MapFS{"sut/alpha.conf": {Data: []byte(confAlpha)}, "docker-compose.yaml": {Data: []byte(tc.compose)}}
			l, err := lab.Load(fsys, lab.LoadOptions{})
			if err == nil {
				t.Fatal("accepted")
			}
			for _, d := range l.Diagnostics {
				if d.File == "docker-compose.yaml" && d.Line > 0 && strings.Contains(d.Message, tc.msg) {
					return
				}
			}
			t.Fatalf("no error with %q in:\n%s", tc.msg, l.Diagnostics)
		})
	}
}
