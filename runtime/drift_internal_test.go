package runtime

import (
	"slices"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/labsync/labsync/lab"
)

// engineView is what an engine reports for a container created from cfg
// and host on an image with no defaults: the starting point each case
// edits.
func engineView(cfg *container.Config, host *container.HostConfig, spec *lab.ContainerSpec) container.InspectResponse {
	c := *cfg
	h := *host
	info := container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: "0123456789abcdef0123", Name: "/" + spec.ContainerName, HostConfig: &h},
		Config:            &c,
		NetworkSettings:   &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{}},
	}
	for _, m := range host.Mounts {
		info.Mounts = append(info.Mounts, container.MountPoint{Type: m.Type, Name: m.Source, Source: "/var/lib/docker/volumes/" + m.Source + "/_data", Destination: m.Target, RW: !m.ReadOnly})
	}
	for _, n := range spec.Networks {
		ep := &network.EndpointSettings{Aliases: append(slices.Clone(n.Aliases), "0123456789ab")}
		if n.IPv4Address != "" {
			ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: n.IPv4Address}
		}
		info.NetworkSettings.Networks[n.Network] = ep
	}
	return info
}

func TestDriftCompare(t *testing.T) {
	spec := func() *lab.ContainerSpec {
		return &lab.ContainerSpec{
			Name: "api", Kind: lab.KindService, ContainerName: "lab-api", Image: "labsync/api:1",
			Env:      map[string]string{"MODE": "lab"},
			Restart:  "always",
			Memory:   64 << 20,
			Mounts:   []lab.MountSpec{{Type: "volume", Source: "lab_data", Target: "/data"}},
			Networks: []lab.NetworkAttachSpec{{Network: "lab_lab", Aliases: []string{"api"}}},
		}
	}
	cases := []struct {
		name string
		spec func(*lab.ContainerSpec)
		// img sets the image's defaults; engine edits what the engine
		// reports.
		img    func(*driftInput)
		engine func(*container.InspectResponse)
		want   []string
	}{
		{name: "as created", want: nil},
		{
			name: "image defaults merged",
			spec: func(s *lab.ContainerSpec) { s.Healthcheck = &lab.HealthSpec{Test: []string{"CMD", "true"}} },
			img: func(in *driftInput) {
				in.imgEnv = []string{"PATH=/bin", "LANG=C"}
				in.imgCmd, in.imgEntrypoint = []string{"serve"}, []string{"/init"}
				in.imgUser, in.imgWorkdir = "app", "/srv"
				in.imgHealth = &container.HealthConfig{Test: []string{"CMD", "check"}, Interval: time.Minute}
				in.imgVolumes = map[string]struct{}{"/var/cache": {}}
				in.imgPorts = map[string]struct{}{"9000/tcp": {}}
			},
			engine: func(i *container.InspectResponse) {
				i.Config.Env = []string{"LANG=C", "MODE=lab", "PATH=/bin"}
				i.Config.Cmd, i.Config.Entrypoint = []string{"serve"}, []string{"/init"}
				i.Config.User, i.Config.WorkingDir = "app", "/srv"
				i.Config.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "true"}, Interval: time.Minute}
				i.Config.ExposedPorts = nat.PortSet{"9000/tcp": {}}
				i.Mounts = append(i.Mounts, container.MountPoint{Type: mount.TypeVolume, Name: "4f3c", Destination: "/var/cache", RW: true})
			},
		},
		{
			name: "engine normalising",
			engine: func(i *container.InspectResponse) {
				i.Config.Env = append(i.Config.Env, "PATH="+defaultLinuxPath)
				i.HostConfig.RestartPolicy.Name = "always"
				i.HostConfig.MemorySwap = 128 << 20
				i.NetworkSettings.Networks["lab_lab"].Aliases = append(i.NetworkSettings.Networks["lab_lab"].Aliases, "lab-api")
			},
		},
		{
			name: "agent's additions at create",
			spec: func(s *lab.ContainerSpec) { s.Kind = lab.KindAgent },
			engine: func(i *container.InspectResponse) {
				i.Config.Env = append(i.Config.Env, "LABSYNC_AGENT_MQTT=unix:///run/labsync-mqtt/agents.sock")
				i.Mounts = append(i.Mounts,
					container.MountPoint{Type: mount.TypeVolume, Name: "lab_labsync-agent-0123", Destination: lab.AgentBinDir},
					container.MountPoint{Type: mount.TypeBind, Source: "/var/lib/labsync/mqtt", Destination: AgentMQTTMount, RW: true})
			},
		},
		{
			name: "a service gets none of them",
			engine: func(i *container.InspectResponse) {
				i.Config.Env = append(i.Config.Env, "LABSYNC_AGENT_MQTT=tcp://x:1883")
			},
			want: []string{"env changed by hand (LABSYNC_AGENT_MQTT added)"},
		},
		{
			name: "hand changes",
			engine: func(i *container.InspectResponse) {
				i.Config.Env = []string{"MODE=prod", "DEBUG=1"}
				i.Config.Cmd = []string{"sh", "-c", "secret=x"}
				i.HostConfig.RestartPolicy = container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}
				i.HostConfig.Memory = 0
				i.HostConfig.NanoCPUs = 1e9
				i.Mounts[0].Name = "other"
				i.NetworkSettings.Networks["lab_lab"].Aliases = []string{"0123456789ab"}
				i.NetworkSettings.Networks["bridge"] = &network.EndpointSettings{}
			},
			want: []string{
				"command changed by hand",
				"env changed by hand (MODE changed, DEBUG added)",
				"restart policy changed by hand (always -> on-failure:3)",
				"memory limit changed by hand (64MiB -> none)",
				"resources changed by hand (cpus set)",
				"mounts changed by hand (/data: volume lab_data -> volume other)",
				"networks changed by hand (lab_lab: aliases [api] -> [], bridge connected)",
			},
		},
		{
			name:   "image by another name",
			engine: func(i *container.InspectResponse) { i.Config.Image = "docker.io/labsync/api:1" },
		},
		{
			name:   "image replaced",
			engine: func(i *container.InspectResponse) { i.Config.Image = "labsync/api:2" },
			want:   []string{"image changed by hand (labsync/api:1 -> labsync/api:2)"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := spec()
			if tc.spec != nil {
				tc.spec(s)
			}
			cfg, host, _, err := (&Client{secrets: EnvSecrets{}}).containerConfig(s, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			in := &driftInput{spec: s, cfg: cfg, host: host, info: engineView(cfg, host, s)}
			if tc.img != nil {
				tc.img(in)
			}
			if tc.engine != nil {
				tc.engine(&in.info)
			}
			var got []string
			for _, d := range in.compare() {
				got = append(got, d.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("drift = %q\nwant    %q", got, tc.want)
			}
		})
	}
}

func TestNormalRef(t *testing.T) {
	for in, want := range map[string]string{
		"redis":                      "docker.io/library/redis:latest",
		"redis:7":                    "docker.io/library/redis:7",
		"docker.io/library/redis:7":  "docker.io/library/redis:7",
		"labsync/lab/api:abc":        "docker.io/labsync/lab/api:abc",
		"localhost:5000/agent":       "localhost:5000/agent:latest",
		"reg.example/agent@sha256:1": "reg.example/agent@sha256:1",
	} {
		if got := normalRef(in); got != want {
			t.Errorf("normalRef(%q) = %q, want %q", in, got, want)
		}
	}
}
