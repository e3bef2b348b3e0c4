package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/labsync/labsync/lab"
)

// policyFlags set the host policy: what the lab repository may ask of
// this host. They belong to the operator: nothing in the repository
// changes them.
type policyFlags struct {
	privileged       bool
	capabilities     listFlag
	devices          listFlag
	bindPaths        listFlag
	dockerSocket     listFlag
	networkDrivers   listFlag
	networkOpts      bool
	ports            string
	volumeDriverOpts bool
}

func (p *policyFlags) register(fs *flag.FlagSet) {
	def := lab.DefaultPolicy()
	p.dockerSocket, p.networkDrivers = def.DockerSocket, def.NetworkDrivers
	envList := func(name string, into *listFlag) {
		if v, ok := os.LookupEnv(name); ok {
			_ = into.Set(v)
		}
	}
	envList("LABSYNC_ALLOW_CAP_ADD", &p.capabilities)
	envList("LABSYNC_ALLOW_DEVICES", &p.devices)
	envList("LABSYNC_ALLOW_BIND_PATHS", &p.bindPaths)
	envList("LABSYNC_ALLOW_DOCKER_SOCKET", &p.dockerSocket)
	envList("LABSYNC_ALLOW_NETWORK_DRIVERS", &p.networkDrivers)
	fs.BoolVar(&p.privileged, "allow-privileged", os.Getenv("LABSYNC_ALLOW_PRIVILEGED") == "true", "host policy: let services run privileged (env: LABSYNC_ALLOW_PRIVILEGED)")
	fs.Var(&p.capabilities, "allow-cap-add", "host policy: capabilities services may add, comma-separated, e.g. NET_ADMIN; ALL for any (env: LABSYNC_ALLOW_CAP_ADD)")
	fs.Var(&p.devices, "allow-devices", "host policy: host devices services may map, as path prefixes, e.g. /dev/ttyUSB (env: LABSYNC_ALLOW_DEVICES)")
	fs.Var(&p.bindPaths, "allow-bind-paths", "host policy: host folders absolute bind mounts may use, e.g. /srv/lab; / for any (env: LABSYNC_ALLOW_BIND_PATHS)")
	fs.Var(&p.dockerSocket, "allow-docker-socket", "host policy: services that may mount the Docker socket, comma-separated, as SERVICE=IMAGE (only that image, its entrypoint kept) or SERVICE; * for any; none by default (env: LABSYNC_ALLOW_DOCKER_SOCKET)")
	fs.Var(&p.networkDrivers, "allow-network-drivers", "host policy: network drivers the stack may use, comma-separated, e.g. bridge,macvlan (env: LABSYNC_ALLOW_NETWORK_DRIVERS)")
	fs.BoolVar(&p.networkOpts, "allow-network-driver-opts", os.Getenv("LABSYNC_ALLOW_NETWORK_DRIVER_OPTS") == "true", "host policy: let networks set driver_opts, such as a macvlan's parent or a bridge's name (env: LABSYNC_ALLOW_NETWORK_DRIVER_OPTS)")
	fs.StringVar(&p.ports, "allow-ports", envOr("LABSYNC_ALLOW_PORTS", lab.DefaultPorts), "host policy: host ports services may publish, e.g. 80,443,1024-65535; \"\" for none (env: LABSYNC_ALLOW_PORTS)")
	fs.BoolVar(&p.volumeDriverOpts, "allow-volume-driver-opts", os.Getenv("LABSYNC_ALLOW_VOLUME_DRIVER_OPTS") == "true", "host policy: let volumes set driver_opts, which can bind host paths (env: LABSYNC_ALLOW_VOLUME_DRIVER_OPTS)")
}

// policy returns the policy the flags set.
func (p *policyFlags) policy() (*lab.Policy, error) {
	if _, err := lab.ParsePorts(p.ports); err != nil {
		return nil, usageError{"--allow-ports: " + err.Error()}
	}
	return &lab.Policy{
		Privileged:        p.privileged,
		Capabilities:      p.capabilities,
		Devices:           p.devices,
		BindPaths:         p.bindPaths,
		DockerSocket:      p.dockerSocket,
		NetworkDrivers:    p.networkDrivers,
		NetworkDriverOpts: p.networkOpts,
		Ports:             p.ports,
		VolumeDriverOpts:  p.volumeDriverOpts,
	}, nil
}

// listFlag is a comma-separated list; each use replaces the list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// configValue turns a value of the config file into a flag's text: lists
// become comma-separated.
func configValue(v any) string {
	if list, ok := v.([]any); ok {
		parts := make([]string, len(list))
		for i, x := range list {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}
