package lab

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Policy is the host policy: what a lab repository may ask of the Docker
// host. Whoever can merge into the lab repository runs containers as root
// on the host; the operator, not the repository, decides how far that
// goes. A commit that asks for more is an error naming the setting that
// would allow it.
type Policy struct {
	// Privileged allows privileged: true.
	Privileged bool `json:"privileged,omitempty"`
	// Capabilities lists the cap_add values allowed; "ALL" allows any.
	Capabilities []string `json:"capabilities,omitempty"`
	// Devices lists the host devices services may map, as prefixes of
	// their paths: "/dev/ttyUSB" allows /dev/ttyUSB0, /dev/ttyUSB1, ...
	Devices []string `json:"devices,omitempty"`
	// BindPaths lists the host path prefixes absolute bind mounts may use;
	// "/" allows any.
	BindPaths []string `json:"bind_paths,omitempty"`
	// DockerSocket lists the services that may mount the Docker socket
	// (or a folder that holds it), as "service=image" or "service"; "*"
	// allows any. With an image (a repository, without tag), the service
	// must run that image as it is: not built from the repository, its
	// entrypoint not replaced. The socket is root on the host.
	DockerSocket []string `json:"docker_socket,omitempty"`
	// NetworkDrivers lists the network drivers the stack may use; macvlan
	// and ipvlan put containers on the host's own networks.
	NetworkDrivers []string `json:"network_drivers,omitempty"`
	// NetworkDriverOpts allows driver_opts on networks (a bridge's name
	// can be an existing host bridge, a macvlan's parent a host NIC).
	NetworkDriverOpts bool `json:"network_driver_opts,omitempty"`
	// Ports are the host port ranges services may publish, e.g.
	// "1024-65535" or "80,443,8000-9000"; "" allows none.
	Ports string `json:"ports"`
	// VolumeDriverOpts allows driver_opts on volumes (with the local
	// driver they bind a host path).
	VolumeDriverOpts bool `json:"volume_driver_opts,omitempty"`
}

// DefaultPolicy allows what the example lab needs and nothing more:
// bridge networks and unprivileged host ports. Nothing gets the Docker
// socket: a service that has it (Portainer is the Docker engine behind a
// web UI) is root on the host for whoever can change its settings.
func DefaultPolicy() Policy {
	return Policy{NetworkDrivers: []string{"bridge"}, Ports: DefaultPorts}
}

// DefaultDaemonPort is labsync serve's default HTTP port, chosen clear of
// the ports a lab's stack publishes (1883, 8000, 8080, 9443, 50000, ...).
const DefaultDaemonPort = 9631

// LabelSocketKnown on a compose service says that it mounts the Docker
// socket knowingly and creates no containers that race labsync.
const LabelSocketKnown = "io.labsync.docker-socket-known"

// DefaultPorts are the host ports a lab may publish by default: none that
// needs root to bind.
const DefaultPorts = "1024-65535"

// dockerSockets are the paths of the engine's socket on a Linux host.
var dockerSockets = []string{"/var/run/docker.sock", "/run/docker.sock"}

// ParsePorts checks a port range list such as "80,443,8000-9000".
func ParsePorts(s string) ([][2]int, error) {
	var out [][2]int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
			return nil, fmt.Errorf("%q is not a port or a range of ports such as 8000-9000", part)
		}
		out = append(out, [2]int{a, b})
	}
	return out, nil
}

// underPrefix reports whether p is one of prefixes or below one, on path
// boundaries.
func underPrefix(p string, prefixes []string) bool {
	p = path.Clean(p)
	for _, pre := range prefixes {
		pre = path.Clean(pre)
		if pre == "/" || p == pre || strings.HasPrefix(p, pre+"/") {
			return true
		}
	}
	return false
}

// checkPolicy reports every request of the stack that the policy does not
// allow, at the line of the key that asks for it.
func (l *Lab) checkPolicy(file string, st *Stack) {
	pol := l.policy
	ports, err := ParsePorts(pol.Ports)
	if err != nil {
		l.d.errorf(file, 0, "the host policy's ports (--allow-ports): %v", err)
		return
	}
	at := func(svc *Service, key string) int {
		if line := lineOf(file, "services."+svc.Name+"."+key, l); line > 0 {
			return line
		}
		return svc.Line
	}
	for _, svc := range st.Services {
		sc := svc.Config
		if sc.Privileged && !pol.Privileged {
			l.d.errorf(file, at(svc, "privileged"), "service '%s' asks for privileged: true, which the host policy does not allow; an operator allows it with --allow-privileged (a privileged container is root on the host)", svc.Name)
		}
		for _, c := range sc.CapAdd {
			name := strings.TrimPrefix(strings.ToUpper(c), "CAP_")
			if !slices.Contains(pol.Capabilities, "ALL") && !slices.ContainsFunc(pol.Capabilities, func(a string) bool { return strings.TrimPrefix(strings.ToUpper(a), "CAP_") == name }) {
				l.d.errorf(file, at(svc, "cap_add"), "service '%s' adds capability %s, which the host policy does not allow; an operator allows it with --allow-cap-add %s", svc.Name, name, name)
			}
		}
		for _, dv := range sc.Devices {
			if !slices.ContainsFunc(pol.Devices, func(pre string) bool { return pre != "" && strings.HasPrefix(path.Clean(dv.Source), pre) }) {
				l.d.errorf(file, at(svc, "devices"), "service '%s' maps host device %s, which the host policy does not allow; an operator allows it with --allow-devices %s", svc.Name, dv.Source, dv.Source)
			}
		}
		for _, v := range sc.Volumes {
			if v.Type != "bind" || !path.IsAbs(v.Source) {
				continue
			}
			src := path.Clean(v.Source)
			socket := slices.ContainsFunc(dockerSockets, func(sock string) bool { return underPrefix(sock, []string{src}) })
			if socket && sc.Labels[LabelSocketKnown] != "true" {
				l.d.warnf(file, at(svc, "volumes"), "service '%s' mounts the Docker socket: if it creates containers (the old stack's master made one agent per SUT), it races labsync for the same devices; remove it, or label it %s: \"true\" to say it does not", svc.Name, LabelSocketKnown)
			}
			if socket && !socketAllowed(pol.DockerSocket, svc) {
				l.d.errorf(file, at(svc, "volumes"), "service '%s' mounts %s, which is or holds the Docker socket; the host policy allows the socket only for %s; an operator allows it with --allow-docker-socket %s (the Docker socket is root on the host)", svc.Name, src, orNone(pol.DockerSocket), strings.Join(append(slices.Clone(pol.DockerSocket), svc.Name+"="+imageRepository(svc.Config.Image)), ","))
			}
			if !slices.Contains(dockerSockets, src) && !underPrefix(src, pol.BindPaths) {
				l.d.errorf(file, at(svc, "volumes"), "service '%s' bind-mounts host path %s, which the host policy does not allow; an operator allows it with --allow-bind-paths %s, or use a named volume", svc.Name, src, src)
			}
		}
		var refused []string
		for _, p := range sc.Ports {
			if p.Published != "" && !portsAllowed(p.Published, ports) {
				refused = append(refused, p.Published)
			}
		}
		for _, p := range sc.Ports {
			if portsAllowed(p.Published, [][2]int{{DefaultDaemonPort, DefaultDaemonPort}}) {
				l.d.warnf(file, at(svc, "ports"), "service '%s' publishes host port %d, labsync serve's default --listen port: start labsync serve with another --listen", svc.Name, DefaultDaemonPort)
			}
		}
		if len(refused) > 0 {
			l.d.errorf(file, at(svc, "ports"), "service '%s' publishes host port(s) %s, outside the ports the host policy allows (%s); an operator allows them with --allow-ports", svc.Name, strings.Join(refused, ", "), orNone([]string{pol.Ports}))
		}
	}
	for _, key := range sortedKeys(st.Networks) {
		driver := st.Networks[key].Config.Driver
		if driver == "" {
			driver = "bridge"
		}
		if !slices.Contains(pol.NetworkDrivers, driver) {
			line := lineOf(file, "networks."+key+".driver", l)
			if line == 0 {
				line = st.Networks[key].Line
			}
			l.d.errorf(file, line, "network '%s' uses driver %s, which the host policy does not allow; an operator allows it with --allow-network-drivers %s", key, driver, strings.Join(append(slices.Clone(pol.NetworkDrivers), driver), ","))
		}
		if len(st.Networks[key].Config.DriverOpts) > 0 && !pol.NetworkDriverOpts {
			line := lineOf(file, "networks."+key+".driver_opts", l)
			if line == 0 {
				line = st.Networks[key].Line
			}
			l.d.errorf(file, line, "network '%s' sets driver_opts, which the host policy does not allow (they can name a host bridge or interface); an operator allows them with --allow-network-driver-opts", key)
		}
	}
	for _, key := range sortedKeys(st.Volumes) {
		v := st.Volumes[key]
		if len(v.Config.DriverOpts) > 0 && !pol.VolumeDriverOpts {
			line := lineOf(file, "volumes."+key+".driver_opts", l)
			if line == 0 {
				line = v.Line
			}
			l.d.errorf(file, line, "volume '%s' sets driver_opts, which the host policy does not allow (with the local driver they bind a host path); an operator allows them with --allow-volume-driver-opts", key)
		}
	}
}

// socketAllowed reports whether the policy's Docker socket entries allow
// svc: "*", its name, or its name with the image it runs as it is.
func socketAllowed(entries []string, svc *Service) bool {
	for _, e := range entries {
		name, image, pinned := strings.Cut(e, "=")
		switch {
		case e == "*":
			return true
		case name != svc.Name:
		case !pinned:
			return true
		case svc.Build == nil && svc.Config.Build == nil && len(svc.Config.Entrypoint) == 0 && imageRepository(svc.Config.Image) == imageRepository(image):
			return true
		}
	}
	return false
}

// imageRepository is an image reference without its tag or digest and
// without the default registry: "docker.io/library/redis:7" is "redis".
func imageRepository(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	ref = strings.TrimPrefix(ref, "docker.io/")
	ref = strings.TrimPrefix(ref, "index.docker.io/")
	return strings.TrimPrefix(ref, "library/")
}

// portsAllowed reports whether a published port or range ("8080",
// "8000-8010") lies within the allowed ranges.
func portsAllowed(published string, allowed [][2]int) bool {
	want, err := ParsePorts(published)
	if err != nil || len(want) != 1 {
		return false
	}
	for p := want[0][0]; p <= want[0][1]; p++ {
		ok := false
		for _, r := range allowed {
			if p >= r[0] && p <= r[1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func orNone(list []string) string {
	var kept []string
	for _, s := range list {
		if s != "" {
			kept = append(kept, s)
		}
	}
	if len(kept) == 0 {
		return "none"
	}
	return strings.Join(kept, ", ")
}
