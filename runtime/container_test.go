package runtime_test

import (
	"context"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// A service using most of the supported Compose keys becomes a container
// whose configuration says the same.
func TestComposeServiceMapsToContainer(t *testing.T) {
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	fsys := fstest.MapFS{
		"lab.yaml":             {Data: []byte("name: " + name + "\ncontainer_prefix: " + name + "-\n")},
		"conf/server.conf":     {Data: []byte("listen 8000\n")},
		"conf/extra/more.conf": {Data: []byte("more\n")},
		"api.env":              {Data: []byte("FROM_FILE=1\nOVERRIDDEN=file\n")},
		"docker-compose.yaml": {Data: []byte(`services:
  api:
    image: ` + image + `
    entrypoint: ["testflinger-server"]
    command: ["--listen", ":8000"]
    env_file: api.env
    environment:
      OVERRIDDEN: environment
      PLAIN: "yes"
    volumes:
      - cache:/cache
      - ./conf:/etc/api
      - type: bind
        source: /tmp
        target: /host-tmp
        read_only: true
    networks:
      lab:
        ipv4_address: 10.213.7.20
        aliases: [testflinger]
    ports:
      - "127.0.0.1::8000"
    expose: ["9000"]
    extra_hosts: ["maas.lab:10.213.7.1"]
    dns: [10.213.7.1]
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "testflinger-server", "check", "http://localhost:8000/v1"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: 1s
    labels:
      lab.role: api
    hostname: api-host
    domainname: lab.example
    sysctls:
      net.ipv4.ip_unprivileged_port_start: "0"
    cap_add: [NET_ADMIN]
    mem_limit: 64m
    user: "0:0"
    working_dir: /etc/api
    tty: true
    stdin_open: true
networks:
  lab:
    driver: bridge
    driver_opts:
      com.docker.network.bridge.enable_icc: "true"
    ipam:
      config:
        - subnet: 10.213.7.0/24
          gateway: 10.213.7.1
volumes:
  cache: {}
`)},
	}
	// The service asks for a host path and a capability, the network for
	// a driver option: the operator allows them.
	policy := lab.DefaultPolicy()
	policy.BindPaths, policy.Capabilities, policy.NetworkDriverOpts = []string{"/tmp"}, []string{"NET_ADMIN"}, true
	l, err := lab.Load(fsys, lab.LoadOptions{Policy: &policy})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	d := lab.Compile(l, lab.CompileOptions{Revision: "r1"})
	ctx := context.Background()
	for _, n := range d.Networks {
		if err := rt.CreateNetwork(ctx, d.Lab, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range d.Volumes {
		if err := rt.CreateVolume(ctx, d.Lab, v); err != nil {
			t.Fatal(err)
		}
	}
	spec := &d.Containers[0]
	id, err := rt.CreateContainer(ctx, spec, runtime.CreateOptions{Lab: d.Lab, Revision: d.Revision})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := rt.WaitRunning(ctx, id, runtime.WaitOptions{Healthy: true, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("service not healthy: %v", err)
	}
	info, err := rt.API().ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cfg, host := info.Config, info.HostConfig
	check := func(what string, got, want any) {
		t.Helper()
		if fmtAny(got) != fmtAny(want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check("entrypoint", []string(cfg.Entrypoint), []string{"testflinger-server"})
	check("cmd", []string(cfg.Cmd), []string{"--listen", ":8000"})
	env := map[string]string{}
	for _, e := range cfg.Env {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	check("env FROM_FILE", env["FROM_FILE"], "1")
	check("env OVERRIDDEN", env["OVERRIDDEN"], "environment")
	check("env PLAIN", env["PLAIN"], "yes")
	check("hostname", cfg.Hostname, "api-host")
	check("domainname", cfg.Domainname, "lab.example")
	check("user", cfg.User, "0:0")
	check("working dir", cfg.WorkingDir, "/etc/api")
	check("tty", cfg.Tty, true)
	check("stdin", cfg.OpenStdin, true)
	check("label lab.role", cfg.Labels["lab.role"], "api")
	check("label lab", cfg.Labels[runtime.LabelLab], name)
	check("healthcheck", cfg.Healthcheck.Test, []string{"CMD", "testflinger-server", "check", "http://localhost:8000/v1"})
	check("healthcheck interval", cfg.Healthcheck.Interval, time.Second)
	check("restart", string(host.RestartPolicy.Name), "unless-stopped")
	check("memory", host.Memory, int64(64<<20))
	if caps := fmtAny([]string(host.CapAdd)); caps != "[NET_ADMIN]" && caps != "[CAP_NET_ADMIN]" {
		t.Errorf("cap add = %s", caps)
	}
	check("sysctl", host.Sysctls["net.ipv4.ip_unprivileged_port_start"], "0")
	check("extra hosts", host.ExtraHosts, []string{"maas.lab:10.213.7.1"})
	check("dns", host.DNS, []string{"10.213.7.1"})
	if _, ok := cfg.ExposedPorts["9000/tcp"]; !ok {
		t.Errorf("9000/tcp not exposed: %v", cfg.ExposedPorts)
	}
	if b := host.PortBindings["8000/tcp"]; len(b) != 1 || b[0].HostIP != "127.0.0.1" {
		t.Errorf("port bindings = %v", host.PortBindings)
	}
	var mounts []string
	for _, m := range host.Mounts {
		mounts = append(mounts, string(m.Type)+":"+m.Source+":"+m.Target+":"+fmtAny(m.ReadOnly))
	}
	sort.Strings(mounts)
	check("mounts", mounts, []string{"bind:/tmp:/host-tmp:true", "volume:" + name + "_cache:/cache:false"})
	ep := info.NetworkSettings.Networks[name+"_lab"]
	if ep == nil || ep.IPAddress != "10.213.7.20" {
		t.Fatalf("network endpoint = %+v", ep)
	}
	if !contains(ep.Aliases, "testflinger") || !contains(ep.Aliases, "api") {
		t.Errorf("aliases = %v", ep.Aliases)
	}
	// Relative bind mounts are copied in from the repository.
	for path, want := range map[string]string{"/etc/api/server.conf": "listen 8000\n", "/etc/api/extra/more.conf": "more\n"} {
		got, err := testenv.ReadContainerFile(ctx, rt, id, path)
		if err != nil || string(got) != want {
			t.Errorf("%s = %q (%v), want %q", path, got, err, want)
		}
	}
	// Observe finds it with its health and hash.
	obs, err := rt.Observe(ctx, name)
	if err != nil || len(obs.Containers) != 1 {
		t.Fatalf("observe = %+v, %v", obs, err)
	}
	oc := obs.Containers[0]
	if oc.Hash != spec.Hash || oc.Health != "healthy" || oc.State != "running" || oc.Kind != lab.KindService || oc.Object != "api" {
		t.Errorf("observed = %+v", oc)
	}
	if len(obs.Networks) != 1 || obs.Networks[0].Hash != d.Networks[0].Hash || len(obs.Volumes) != 1 {
		t.Errorf("observed networks %+v volumes %+v", obs.Networks, obs.Volumes)
	}
}

// A volume of the lab's name that labsync did not create is never adopted.
func TestCreateVolumeRefusesForeignVolume(t *testing.T) {
	rt := testenv.Docker(t)
	name := testenv.Name(t)
	ctx := context.Background()
	v, err := rt.API().VolumeCreate(ctx, volumeOpts(name+"_data"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.API().VolumeRemove(context.Background(), v.Name, true) })
	err = rt.CreateVolume(ctx, name, lab.VolumeSpec{Key: "data", Name: name + "_data"})
	if err == nil || !strings.Contains(err.Error(), "does not manage") {
		t.Fatalf("err = %v, want a refusal", err)
	}
}
