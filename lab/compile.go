package lab

import (
	"fmt"
	"net"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
)

// CompileOptions tune Compile.
type CompileOptions struct {
	// Revision is stamped on created containers; it does not change hashes.
	Revision string
}

// Compile turns a valid lab into the desired state of its Docker host. It
// is deterministic: the same lab gives the same specs and hashes.
func Compile(l *Lab, opts CompileOptions) *Desired {
	d := &Desired{Lab: l.Name, Revision: opts.Revision, ComposeProject: l.Config.Adopt.ComposeProject, ContainerPrefix: l.Config.ContainerPrefix, TestflingerServer: l.Config.Testflinger.Server, MQTTPrefix: orDefault(l.Config.MQTT.Prefix, "labsync/"+l.Name)}
	if d.Revision == "" {
		d.Revision = "dir-" + l.Digest[:12]
	}
	d.Prune = PrunePolicy{Enabled: true, MaxFraction: DefaultMaxFraction}
	if p := l.Config.Prune.Enabled; p != nil {
		d.Prune.Enabled = *p
	}
	if f := l.Config.Prune.MaxFraction; f != nil {
		d.Prune.MaxFraction = *f
	}
	u := l.Config.Agents.Update
	d.Update = UpdatePolicy{Parallelism: u.Parallelism, StartTimeout: time.Duration(u.StartTimeout), MinUptime: time.Duration(u.MinUptime),
		BusyTimeout: time.Duration(u.BusyTimeout), BusyPolicy: u.BusyPolicy}
	if d.Update.BusyTimeout == 0 {
		d.Update.BusyTimeout = DefaultBusyTimeout
	}
	if d.Update.BusyPolicy == "" {
		d.Update.BusyPolicy = BusyPolicyRecreate
	}
	if d.Update.Parallelism == 0 {
		d.Update.Parallelism = DefaultParallelism
	}
	if d.Update.StartTimeout == 0 {
		d.Update.StartTimeout = DefaultStartTimeout
	}
	if d.Update.MinUptime == 0 {
		d.Update.MinUptime = DefaultMinUptime
	}

	images := map[string]ImageSpec{}
	addBuild := func(b *BuildContext) string {
		tag := b.Tag(l.Name)
		images[tag] = ImageSpec{Tag: tag, Context: b, Source: l.fsys}
		return tag
	}
	usedNets := map[string]bool{}
	if l.Stack != nil {
		for _, svc := range l.Stack.Services {
			c := l.compileService(svc)
			if svc.Build != nil {
				c.Image = addBuild(svc.Build)
				c.BuildTag = c.Image
			}
			for _, n := range c.Networks {
				usedNets[n.Network] = true
			}
			c.seal()
			d.Containers = append(d.Containers, c)
		}
	}
	if l.Stack != nil {
		d.Broker = stackBroker(l.Stack)
	}
	d.Agents = map[string]AgentInfo{}
	d.Held = map[string]Diagnostics{}
	for name, ds := range l.Held {
		d.Held[name] = ds
	}
	for _, s := range l.SUTs {
		if !s.Enabled() || l.Held[s.Name] != nil {
			continue
		}
		info := AgentInfo{Server: orDefault(l.Config.Testflinger.Server, s.Agent.ServerAddress), Queues: append([]string(nil), s.Agent.JobQueues...)}
		if s.Job != nil {
			info.JobTemplate = s.Job.Data
		}
		d.Agents[s.Name] = info
		c := l.compileAgent(s, d.Broker)
		if c.Image == "" {
			c.Image = addBuild(l.AgentImage.Build)
			c.BuildTag = c.Image
		}
		for _, n := range c.Networks {
			usedNets[n.Network] = true
		}
		c.seal()
		d.Containers = append(d.Containers, c)
	}
	sort.SliceStable(d.Containers, func(i, j int) bool {
		a, b := d.Containers[i], d.Containers[j]
		if a.Kind != b.Kind {
			return a.Kind == KindService
		}
		return a.Name < b.Name
	})
	for _, tag := range sortedKeys(images) {
		d.Images = append(d.Images, images[tag])
	}
	if l.Stack != nil {
		for _, key := range sortedKeys(l.Stack.Networks) {
			sn := l.Stack.Networks[key]
			if !usedNets[sn.Name] && key == "default" {
				continue
			}
			ns := NetworkSpec{Key: key, Name: sn.Name, Driver: sn.Config.Driver, DriverOpts: sn.Config.DriverOpts}
			for _, p := range sn.Config.Ipam.Config {
				if p != nil {
					ns.IPAM = append(ns.IPAM, IPAMPool{Subnet: p.Subnet, Gateway: p.Gateway, IPRange: p.IPRange})
				}
			}
			ns.Hash = hashJSON(ns)
			d.Networks = append(d.Networks, ns)
		}
		for _, key := range sortedKeys(l.Stack.Volumes) {
			sv := l.Stack.Volumes[key]
			vs := VolumeSpec{Key: key, Name: sv.Name, Driver: sv.Config.Driver, DriverOpts: sv.Config.DriverOpts}
			vs.Hash = hashJSON(vs)
			d.Volumes = append(d.Volumes, vs)
		}
	}
	if def := l.objectName("default"); usedNets[def] && !hasNetwork(d.Networks, def) {
		ns := NetworkSpec{Key: "default", Name: def}
		ns.Hash = hashJSON(ns)
		d.Networks = append(d.Networks, ns)
	}
	return d
}

func hasNetwork(list []NetworkSpec, name string) bool {
	for _, n := range list {
		if n.Name == name {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// networkName maps a stack network key to its Docker name.
func (l *Lab) networkName(key string) string {
	if l.Stack != nil {
		if sn := l.Stack.Networks[key]; sn != nil {
			return sn.Name
		}
	}
	return l.objectName(key)
}

func (l *Lab) agentNetworks() map[string]NetworkAttach {
	if len(l.Config.Agents.Networks) > 0 {
		return l.Config.Agents.Networks
	}
	if l.Stack != nil {
		var declared []string
		for k := range l.Stack.Networks {
			if k != "default" {
				declared = append(declared, k)
			}
		}
		if len(declared) == 1 {
			return map[string]NetworkAttach{declared[0]: {}}
		}
	}
	return map[string]NetworkAttach{"default": {}}
}

// stackBroker finds the stack's MQTT broker: the first service, by name,
// whose image is a Mosquitto or that serves container port 1883.
func stackBroker(st *Stack) *StackBroker {
	for _, svc := range st.Services {
		sc := svc.Config
		b := &StackBroker{Service: svc.Name}
		is := strings.HasSuffix(imageRepository(sc.Image), "mosquitto") || slices.Contains(sc.Expose, "1883")
		for _, p := range sc.Ports {
			if p.Target == 1883 {
				is = true
				b.HostIP, b.HostPort = p.HostIP, p.Published
			}
		}
		if is {
			return b
		}
	}
	return nil
}

// sharesNetwork reports whether an agent (with its overrides) joins a
// network of the stack service.
func (l *Lab) sharesNetwork(service string, o *AgentOverride) bool {
	agent := map[string]NetworkAttach{}
	for k, v := range l.agentNetworks() {
		agent[k] = v
	}
	for k := range o.Networks {
		agent[k] = NetworkAttach{}
	}
	for _, svc := range l.Stack.Services {
		if svc.Name != service {
			continue
		}
		nets := svc.Config.Networks
		if len(nets) == 0 {
			_, ok := agent["default"]
			return ok
		}
		for k := range nets {
			if _, ok := agent[k]; ok {
				return true
			}
		}
	}
	return false
}

// DefaultAgentMQTTPort is the broker port labsync-agent reaches a stack's
// broker on, by service name.
const DefaultAgentMQTTPort = "1883"

func (l *Lab) compileAgent(s *SUT, broker *StackBroker) ContainerSpec {
	cfg := l.Config.Agents
	o := s.Override
	if o == nil {
		o = &AgentOverride{}
	}
	paths := map[string]string{
		"conf":      orDefault(cfg.Files.Conf, DefaultConfPath),
		"connector": orDefault(cfg.Files.Connector, DefaultConnectorPath),
		"job":       cfg.Files.Job,
	}
	base := map[string]string{"name": s.Name, "lab": l.Name}
	vars := map[string]string{"name": s.Name, "lab": l.Name}
	for k, v := range paths {
		vars[k] = expand(v, base)
	}
	c := ContainerSpec{
		Name:          s.Name,
		Kind:          KindAgent,
		ContainerName: l.Config.ContainerPrefix + s.Name,
		Hostname:      s.Name,
		Restart:       orDefault(cfg.Restart, DefaultRestart),
		Memory:        int64(cfg.Memory),
		Labels:        copyMap(cfg.Labels),
		Secrets:       copyMap(cfg.Secrets),
		Device:        normalizeDevice(s.DeviceIP),
		// testflinger-agent and its device connectors start processes
		// that may outlive them: an init reaps them.
		Init: true,
	}
	switch {
	case o.Image != "":
		c.Image = o.Image
	case l.AgentImage.Name != "":
		c.Image = l.AgentImage.Name
	}
	cmd := cfg.Command
	if len(o.Command) > 0 {
		cmd = o.Command
	}
	if len(cmd) == 0 {
		cmd = DefaultAgentCommand
	}
	for _, a := range cmd {
		c.Command = append(c.Command, expand(a, vars))
	}
	if o.Memory != 0 {
		c.Memory = int64(o.Memory)
	}
	env := map[string]string{}
	for k, v := range cfg.Env {
		env[k] = expand(v, vars)
	}
	for k, v := range o.Env {
		env[k] = expand(v, vars)
	}
	// The stack's broker, by service name on the agents' network, unless
	// the lab names another.
	if _, set := env["LABSYNC_AGENT_MQTT"]; !set && broker != nil && l.sharesNetwork(broker.Service, o) {
		env["LABSYNC_AGENT_MQTT"] = "tcp://" + broker.Service + ":" + DefaultAgentMQTTPort
	}
	if len(env) > 0 {
		c.Env = env
	}
	addFile := func(f *SourceFile, dst string) {
		if f == nil || dst == "" {
			return
		}
		c.Files = append(c.Files, FileSpec{Path: dst, Mode: 0o644, Content: f.Data, Digest: f.Digest(), Source: f.Path, Keys: f.Keys})
		c.Sources = append(c.Sources, f.Path)
	}
	addFile(s.Conf, vars["conf"])
	addFile(s.Connector, vars["connector"])
	addFile(s.Job, vars["job"])
	if s.OverrideFile != nil {
		c.Sources = append(c.Sources, s.OverrideFile.Path)
	}
	nets := l.agentNetworks()
	for key, a := range o.Networks {
		nets = mergeAttach(nets, key, a)
	}
	for _, key := range sortedKeys(nets) {
		a := nets[key]
		aliases := append([]string{s.Name}, a.Aliases...)
		c.Networks = append(c.Networks, NetworkAttachSpec{Network: l.networkName(key), IPv4Address: a.IPv4Address, Aliases: dedupe(aliases)})
	}
	hc := cfg.Healthcheck
	if hc == nil {
		hc = &DefaultAgentHealthcheck
	}
	c.Healthcheck = healthSpec(hc.Disable, hc.Test, time.Duration(hc.Interval), time.Duration(hc.Timeout), time.Duration(hc.StartPeriod), hc.Retries, vars)
	return c
}

func mergeAttach(nets map[string]NetworkAttach, key string, a NetworkAttach) map[string]NetworkAttach {
	out := make(map[string]NetworkAttach, len(nets)+1)
	for k, v := range nets {
		out[k] = v
	}
	out[key] = a
	return out
}

func healthSpec(disable bool, test []string, interval, timeout, start time.Duration, retries int, vars map[string]string) *HealthSpec {
	if disable {
		return &HealthSpec{Test: []string{"NONE"}}
	}
	if len(test) == 0 {
		return nil
	}
	h := &HealthSpec{Interval: interval, Timeout: timeout, StartPeriod: start, Retries: retries}
	for _, t := range test {
		h.Test = append(h.Test, expand(t, vars))
	}
	return h
}

func (l *Lab) compileService(svc *Service) ContainerSpec {
	sc := svc.Config
	c := ContainerSpec{
		Name:          svc.Name,
		Kind:          KindService,
		ContainerName: l.serviceContainerName(svc),
		Image:         sc.Image,
		Command:       []string(sc.Command),
		Entrypoint:    []string(sc.Entrypoint),
		Restart:       orDefault(sc.Restart, "no"),
		Labels:        copyMap(sc.Labels),
		Hostname:      sc.Hostname,
		Domainname:    sc.DomainName,
		Privileged:    sc.Privileged,
		Sysctls:       copyMap(sc.Sysctls),
		CapAdd:        sortedCopy(sc.CapAdd),
		Memory:        int64(sc.MemLimit),
		User:          sc.User,
		WorkingDir:    sc.WorkingDir,
		Tty:           sc.Tty,
		StdinOpen:     sc.StdinOpen,
		DNS:           []string(sc.DNS),
		Sources:       []string{l.Stack.File},
	}
	if len(svc.Env) > 0 {
		c.Env = copyMap(svc.Env)
	}
	for _, mf := range svc.Files {
		c.Files = append(c.Files, FileSpec{Path: mf.Target, Mode: mf.Mode, Content: mf.File.Data, Digest: mf.File.Digest(), Source: mf.File.Path})
		c.Sources = append(c.Sources, mf.File.Path)
	}
	for _, m := range svc.Data {
		c.Mounts = append(c.Mounts, MountSpec{Type: "bind", Source: m.HostPath, Target: m.Target, ReadOnly: m.ReadOnly, Create: true})
	}
	for _, v := range sc.Volumes {
		switch v.Type {
		case types.VolumeTypeBind:
			if path.IsAbs(v.Source) {
				c.Mounts = append(c.Mounts, MountSpec{Type: "bind", Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
			}
		default:
			src := v.Source
			if sv := l.Stack.Volumes[src]; sv != nil {
				src = sv.Name
			}
			c.Mounts = append(c.Mounts, MountSpec{Type: "volume", Source: src, Target: v.Target, ReadOnly: v.ReadOnly})
		}
	}
	for _, key := range sortedKeys(sc.Networks) {
		nc := sc.Networks[key]
		a := NetworkAttachSpec{Network: l.networkName(key), Aliases: []string{svc.Name}}
		if nc != nil {
			a.IPv4Address = nc.Ipv4Address
			a.Aliases = dedupe(append(a.Aliases, nc.Aliases...))
		}
		c.Networks = append(c.Networks, a)
	}
	for _, p := range sc.Ports {
		proto := orDefault(p.Protocol, "tcp")
		c.Ports = append(c.Ports, PortSpec{HostIP: p.HostIP, HostPort: p.Published, ContainerPort: p.Target, Protocol: proto})
	}
	for _, e := range sc.Expose {
		if !strings.Contains(e, "/") {
			e += "/tcp"
		}
		c.Expose = append(c.Expose, e)
	}
	sort.Strings(c.Expose)
	for _, host := range sortedKeys(sc.ExtraHosts) {
		for _, ip := range sc.ExtraHosts[host] {
			c.ExtraHosts = append(c.ExtraHosts, host+":"+ip)
		}
	}
	for _, dv := range sc.Devices {
		c.Devices = append(c.Devices, DeviceSpec{Host: dv.Source, Container: orDefault(dv.Target, dv.Source), Permissions: dv.Permissions})
	}
	if hc := sc.HealthCheck; hc != nil {
		c.Healthcheck = healthSpec(hc.Disable, normalizeTest(hc.Test), dur(hc.Interval), dur(hc.Timeout), dur(hc.StartPeriod), retries(hc.Retries), nil)
	}
	for _, dep := range sortedKeys(sc.DependsOn) {
		c.DependsOn = append(c.DependsOn, Dependency{Name: dep, Condition: sc.DependsOn[dep].Condition})
	}
	return c
}

// normalizeTest turns a Compose test string into Docker's list form.
func normalizeTest(t types.HealthCheckTest) []string {
	if len(t) == 1 && t[0] != "NONE" {
		return []string{"CMD-SHELL", t[0]}
	}
	return []string(t)
}

// hasHealthcheck reports whether a Compose healthcheck really checks.
func hasHealthcheck(hc *types.HealthCheckConfig) bool {
	return hc != nil && !hc.Disable && len(hc.Test) > 0 && hc.Test[0] != "NONE"
}

// normalizeDevice makes device addresses comparable: lower case, and IP
// addresses in canonical form.
func normalizeDevice(s string) string {
	if ip := net.ParseIP(strings.TrimSpace(s)); ip != nil {
		return ip.String()
	}
	return strings.ToLower(strings.TrimSpace(s))
}

func dur(d *types.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return time.Duration(*d)
}

func retries(r *uint64) int {
	if r == nil {
		return 0
	}
	return int(*r)
}

// expand replaces {var} placeholders in one pass, so the result never
// depends on the order of vars.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "{") {
		return s
	}
	pairs := make([]string, 0, 2*len(vars))
	for _, k := range sortedKeys(vars) {
		pairs = append(pairs, "{"+k+"}", vars[k])
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sortedCopy(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// String describes a dependency for messages.
func (d Dependency) String() string { return fmt.Sprintf("%s (%s)", d.Name, d.Condition) }
