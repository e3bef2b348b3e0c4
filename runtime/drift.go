package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/labsync/labsync/lab"
)

// DriftCheck is a container to compare, field by field, with the spec it
// was made from (its spec hash label is the spec's).
type DriftCheck struct {
	Spec *lab.ContainerSpec
	ID   string
}

// FieldDrift is one way a running container differs from what its spec
// makes, although its labels say it was made from that spec.
type FieldDrift struct {
	// Field names what differs: "restart policy", "env", "networks", ...
	Field string
	// Detail says how, never with an env value or a command line:
	// "always -> no", "TOKEN changed", "lab disconnected". It may be empty.
	Detail string
}

// String renders the drift as a reason.
func (d FieldDrift) String() string {
	if d.Detail == "" {
		return d.Field + " changed by hand"
	}
	return d.Field + " changed by hand (" + d.Detail + ")"
}

// defaultLinuxPath is the PATH an engine may give a container whose image
// sets none.
const defaultLinuxPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// InspectDrift inspects the container of each check and returns, by
// container ID, the fields it has that its spec would not give it now:
// what `docker update`, `docker network disconnect` or a container made
// again by hand with the same labels change while the labels stay. The
// expected container is built by the code that creates containers, with
// the image's defaults merged in as the engine merges them; what labsync
// adds at create outside the spec (the labsync-agent volume, the agents'
// MQTT socket and its variable) is not compared. Containers without drift
// are absent. A container gone since it was listed is skipped; the errors
// of one container do not stop the others and are returned joined.
func (c *Client) InspectDrift(ctx context.Context, checks []DriftCheck) (map[string][]FieldDrift, error) {
	out := map[string][]FieldDrift{}
	images := map[string]*image.InspectResponse{}
	var errs []error
	for _, ch := range checks {
		d, err := c.containerDrift(ctx, ch, images)
		switch {
		case cerrdefs.IsNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("inspect %s for drift: %w", ch.Spec.ContainerName, err))
		case len(d) > 0:
			out[ch.ID] = d
		}
	}
	return out, errors.Join(errs...)
}

// lenientSecrets resolves what it can and remembers the names it could
// not: their variables are compared by presence only.
type lenientSecrets struct {
	src     SecretSource
	missing map[string]bool
}

func (s *lenientSecrets) Secret(name string) (string, error) {
	v, err := s.src.Secret(name)
	if err != nil {
		s.missing[name] = true
		return "", nil
	}
	return v, nil
}

func (c *Client) containerDrift(ctx context.Context, ch DriftCheck, images map[string]*image.InspectResponse) ([]FieldDrift, error) {
	info, err := c.api.ContainerInspect(ctx, ch.ID)
	if err != nil {
		return nil, err
	}
	if info.ContainerJSONBase == nil || info.Config == nil || info.HostConfig == nil {
		return nil, fmt.Errorf("engine returned an incomplete inspect of %s", ch.ID)
	}
	img, ok := images[info.Image]
	if !ok {
		r, err := c.api.ImageInspect(ctx, info.Image)
		if err != nil && !cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("inspect image %s: %w", info.Image, err)
		}
		if err == nil {
			img = &r
		}
		images[info.Image] = img
	}
	var imgCfg image.InspectResponse
	if img != nil {
		imgCfg = *img
	}
	secrets := &lenientSecrets{src: c.secrets, missing: map[string]bool{}}
	// The same code that creates the container, without what is added at
	// create outside the spec hash.
	exp := &Client{api: c.api, log: c.log, secrets: secrets, calls: c.calls}
	cfg, host, _, err := exp.containerConfig(ch.Spec, CreateOptions{})
	if err != nil {
		return nil, err
	}
	in := driftInput{spec: ch.Spec, cfg: cfg, host: host, info: info, missing: secrets.missing}
	if imgCfg.Config != nil {
		ic := imgCfg.Config
		in.imgEnv, in.imgCmd, in.imgEntrypoint = ic.Env, ic.Cmd, ic.Entrypoint
		in.imgUser, in.imgWorkdir, in.imgVolumes, in.imgPorts = ic.User, ic.WorkingDir, ic.Volumes, ic.ExposedPorts
		if h := ic.Healthcheck; h != nil {
			in.imgHealth = &container.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
		}
	}
	return in.compare(), nil
}

// driftInput is what one comparison needs: the expected config, the
// inspected container and its image's defaults.
type driftInput struct {
	spec    *lab.ContainerSpec
	cfg     *container.Config
	host    *container.HostConfig
	info    container.InspectResponse
	missing map[string]bool

	imgEnv, imgCmd, imgEntrypoint []string
	imgUser, imgWorkdir           string
	imgVolumes, imgPorts          map[string]struct{}
	imgHealth                     *container.HealthConfig
}

func (in *driftInput) compare() []FieldDrift {
	var out []FieldDrift
	add := func(field, detail string) { out = append(out, FieldDrift{Field: field, Detail: detail}) }
	oc, oh := in.info.Config, in.info.HostConfig

	if !sameImageRef(oc.Image, in.cfg.Image) {
		add("image", fmt.Sprintf("%s -> %s", in.cfg.Image, oc.Image))
	}
	// The engine takes the image's command and entrypoint when the
	// container sets no entrypoint; with one, only the image's command is
	// dropped.
	wantCmd, wantEntry := []string(in.cfg.Cmd), []string(in.cfg.Entrypoint)
	if len(wantEntry) == 0 {
		if len(wantCmd) == 0 {
			wantCmd = in.imgCmd
		}
		wantEntry = in.imgEntrypoint
	}
	if !slices.Equal(wantCmd, oc.Cmd) {
		add("command", "")
	}
	if !slices.Equal(wantEntry, oc.Entrypoint) {
		add("entrypoint", "")
	}
	if d := in.envDrift(); d != "" {
		add("env", d)
	}
	if d := healthDrift(mergeHealth(in.cfg.Healthcheck, in.imgHealth), oc.Healthcheck); d != "" {
		add("healthcheck", d)
	}
	if want := orElse(in.cfg.User, in.imgUser); want != oc.User {
		add("user", fmt.Sprintf("%q -> %q", want, oc.User))
	}
	if want := orElse(in.cfg.WorkingDir, in.imgWorkdir); want != oc.WorkingDir {
		add("working dir", fmt.Sprintf("%q -> %q", want, oc.WorkingDir))
	}
	// Without one in the spec the engine names the container itself.
	if in.cfg.Hostname != "" && in.cfg.Hostname != oc.Hostname {
		add("hostname", fmt.Sprintf("%s -> %s", in.cfg.Hostname, oc.Hostname))
	}
	if in.cfg.Domainname != "" && in.cfg.Domainname != oc.Domainname {
		add("domainname", fmt.Sprintf("%s -> %s", in.cfg.Domainname, oc.Domainname))
	}
	if in.cfg.Tty != oc.Tty || in.cfg.OpenStdin != oc.OpenStdin {
		add("tty/stdin", "")
	}
	var labels []string
	for k, v := range in.spec.Labels {
		if oc.Labels[k] != v {
			labels = append(labels, k)
		}
	}
	if len(labels) > 0 {
		sort.Strings(labels)
		add("labels", strings.Join(labels, ", "))
	}
	if d := portsDrift(in.cfg.ExposedPorts, in.imgPorts, in.host.PortBindings, oc.ExposedPorts, oh.PortBindings); d != "" {
		add("ports", d)
	}

	if want, got := policyString(in.host.RestartPolicy), policyString(oh.RestartPolicy); want != got {
		add("restart policy", want+" -> "+got)
	}
	if want, got := in.host.Memory, oh.Memory; want != got {
		add("memory limit", byteSize(want)+" -> "+byteSize(got))
	}
	if d := otherResources(oh.Resources); d != "" {
		add("resources", d)
	}
	if d := devicesDrift(in.host.Devices, oh.Devices); d != "" {
		add("devices", d)
	}
	if in.host.Privileged != oh.Privileged {
		add("privileged", fmt.Sprintf("%t -> %t", in.host.Privileged, oh.Privileged))
	}
	if (in.host.Init != nil && *in.host.Init) != (oh.Init != nil && *oh.Init) {
		add("init", "")
	}
	if !sameSet(normCaps(in.host.CapAdd), normCaps(oh.CapAdd)) {
		add("cap_add", "")
	}
	if !sameSet(in.host.DNS, oh.DNS) {
		add("dns", "")
	}
	if !sameSet(in.host.ExtraHosts, oh.ExtraHosts) {
		add("extra hosts", "")
	}
	if !sameMap(in.host.Sysctls, oh.Sysctls) {
		add("sysctls", "")
	}
	if d := in.mountsDrift(); d != "" {
		add("mounts", d)
	}
	if d := in.networksDrift(); d != "" {
		add("networks", d)
	}
	return out
}

// envDrift names the variables that differ, never their values. The
// engine starts from the image's variables and replaces those the
// container sets.
func (in *driftInput) envDrift() string {
	want := envMap(in.imgEnv)
	for k, v := range envMap(in.cfg.Env) {
		want[k] = v
	}
	got := envMap(in.info.Config.Env)
	secretKey := map[string]bool{}
	for k, name := range in.spec.Secrets {
		if in.missing[name] {
			secretKey[k] = true
		}
	}
	if in.spec.Kind == lab.KindAgent && ownsAgentMQTT(in.spec) {
		// Given at create only while the embedded broker runs.
		delete(want, "LABSYNC_AGENT_MQTT")
		delete(got, "LABSYNC_AGENT_MQTT")
	}
	if _, ok := want["PATH"]; !ok && got["PATH"] == defaultLinuxPath {
		delete(got, "PATH")
	}
	var diffs []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, k+" removed")
		case secretKey[k]:
			// Its secret cannot be read now: presence only.
		case g != want[k]:
			diffs = append(diffs, k+" changed")
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, k+" added")
		}
	}
	return strings.Join(diffs, ", ")
}

// ownsAgentMQTT reports whether labsync may give an agent container the
// embedded broker's socket: its spec names no broker of its own.
func ownsAgentMQTT(spec *lab.ContainerSpec) bool {
	_, own := spec.Env["LABSYNC_AGENT_MQTT"]
	_, secret := spec.Secrets["LABSYNC_AGENT_MQTT"]
	return !own && !secret
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return m
}

// mergeHealth fills what the container's check leaves unset from the
// image's, as the engine does.
func mergeHealth(c, img *container.HealthConfig) *container.HealthConfig {
	if c == nil {
		return img
	}
	if img == nil {
		return c
	}
	m := *c
	if len(m.Test) == 0 {
		m.Test = img.Test
	}
	if m.Interval == 0 {
		m.Interval = img.Interval
	}
	if m.Timeout == 0 {
		m.Timeout = img.Timeout
	}
	if m.StartPeriod == 0 {
		m.StartPeriod = img.StartPeriod
	}
	if m.Retries == 0 {
		m.Retries = img.Retries
	}
	return &m
}

func healthDrift(want, got *container.HealthConfig) string {
	if want == nil {
		want = &container.HealthConfig{}
	}
	if got == nil {
		got = &container.HealthConfig{}
	}
	var d []string
	if !slices.Equal(want.Test, got.Test) {
		d = append(d, "test")
	}
	if want.Interval != got.Interval {
		d = append(d, fmt.Sprintf("interval %s -> %s", want.Interval, got.Interval))
	}
	if want.Timeout != got.Timeout {
		d = append(d, fmt.Sprintf("timeout %s -> %s", want.Timeout, got.Timeout))
	}
	if want.StartPeriod != got.StartPeriod {
		d = append(d, fmt.Sprintf("start period %s -> %s", want.StartPeriod, got.StartPeriod))
	}
	if want.Retries != got.Retries {
		d = append(d, fmt.Sprintf("retries %d -> %d", want.Retries, got.Retries))
	}
	return strings.Join(d, ", ")
}

func portsDrift(wantExposed nat.PortSet, imgExposed map[string]struct{}, wantBind nat.PortMap, gotExposed nat.PortSet, gotBind nat.PortMap) string {
	want := map[string]bool{}
	for p := range wantExposed {
		want[string(p)] = true
	}
	for p := range imgExposed {
		want[p] = true
	}
	got := map[string]bool{}
	for p := range gotExposed {
		got[string(p)] = true
	}
	var d []string
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if !got[p] {
			d = append(d, p+" no longer exposed")
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if !want[p] {
			d = append(d, p+" exposed")
		}
	}
	ports := map[string]bool{}
	for p := range wantBind {
		ports[string(p)] = true
	}
	for p := range gotBind {
		ports[string(p)] = true
	}
	for _, p := range slices.Sorted(maps.Keys(ports)) {
		w, g := bindings(wantBind[nat.Port(p)]), bindings(gotBind[nat.Port(p)])
		if !slices.Equal(w, g) {
			d = append(d, fmt.Sprintf("%s published on [%s] -> [%s]", p, strings.Join(w, " "), strings.Join(g, " ")))
		}
	}
	return strings.Join(d, ", ")
}

func bindings(bs []nat.PortBinding) []string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.HostIP+":"+b.HostPort)
	}
	sort.Strings(out)
	return out
}

func policyString(p container.RestartPolicy) string {
	name := string(p.Name)
	if name == "" {
		name = string(container.RestartPolicyDisabled)
	}
	if p.MaximumRetryCount > 0 {
		return fmt.Sprintf("%s:%d", name, p.MaximumRetryCount)
	}
	return name
}

// otherResources names the limits labsync never sets that a container
// has anyway (docker update --cpus, --pids-limit, ...).
func otherResources(r container.Resources) string {
	var d []string
	if r.NanoCPUs != 0 || r.CPUQuota != 0 || r.CPUPeriod != 0 {
		d = append(d, "cpus")
	}
	if r.CPUShares != 0 {
		d = append(d, "cpu shares")
	}
	if r.CpusetCpus != "" || r.CpusetMems != "" {
		d = append(d, "cpuset")
	}
	if r.MemoryReservation != 0 {
		d = append(d, "memory reservation")
	}
	if r.PidsLimit != nil && *r.PidsLimit > 0 {
		d = append(d, "pids limit")
	}
	if r.BlkioWeight != 0 {
		d = append(d, "blkio weight")
	}
	if len(d) == 0 {
		return ""
	}
	return strings.Join(d, ", ") + " set"
}

func devicesDrift(want, got []container.DeviceMapping) string {
	key := func(ds []container.DeviceMapping) []string {
		out := make([]string, 0, len(ds))
		for _, d := range ds {
			in := d.PathInContainer
			if in == "" {
				in = d.PathOnHost
			}
			perms := d.CgroupPermissions
			if perms == "" {
				perms = "rwm"
			}
			out = append(out, d.PathOnHost+":"+in+":"+perms)
		}
		return out
	}
	w, g := key(want), key(got)
	if sameSet(w, g) {
		return ""
	}
	return fmt.Sprintf("[%s] -> [%s]", strings.Join(sorted(w), " "), strings.Join(sorted(g), " "))
}

// mountPoint is a mount as the engine reports it, by destination.
type mountPoint struct {
	typ string
	// source is the volume's name or the bind's host path.
	source string
	rw     bool
}

func (m mountPoint) String() string {
	s := m.typ + " " + m.source
	if !m.rw {
		s += " (read-only)"
	}
	return s
}

// mountsDrift compares the mounts the engine reports (whichever form
// made them) with the spec's, by destination.
func (in *driftInput) mountsDrift() string {
	want := map[string]mountPoint{}
	for _, m := range in.host.Mounts {
		want[path.Clean(m.Target)] = mountPoint{typ: string(m.Type), source: cleanSource(string(m.Type), m.Source), rw: !m.ReadOnly}
	}
	for _, b := range in.host.Binds {
		rw := true
		if s, ok := strings.CutSuffix(b, ":ro"); ok {
			b, rw = s, false
		}
		i := strings.LastIndex(b, ":")
		if i < 0 {
			continue
		}
		want[path.Clean(b[i+1:])] = mountPoint{typ: "bind", source: path.Clean(b[:i]), rw: rw}
	}
	got := map[string]mountPoint{}
	for _, m := range in.info.Mounts {
		src := m.Name
		if m.Type != "volume" {
			src = m.Source
		}
		got[path.Clean(m.Destination)] = mountPoint{typ: string(m.Type), source: cleanSource(string(m.Type), src), rw: m.RW}
	}
	for dst, m := range got {
		_, declared := want[dst]
		switch {
		case declared:
		case in.spec.Kind == lab.KindAgent && (dst == lab.AgentBinDir || dst == AgentMQTTMount && ownsAgentMQTT(in.spec)):
			// labsync-agent and the agents' socket: added at create.
			delete(got, dst)
		case m.typ == "volume" && hasKey(in.imgVolumes, dst):
			// The image's own anonymous volume.
			delete(got, dst)
		}
	}
	var d []string
	for _, dst := range slices.Sorted(maps.Keys(want)) {
		w := want[dst]
		g, ok := got[dst]
		switch {
		case !ok:
			d = append(d, dst+" unmounted")
		case w.typ == "volume" && w.source == "":
			// An anonymous volume: any name.
			if g.typ != "volume" || g.rw != w.rw {
				d = append(d, fmt.Sprintf("%s: anonymous volume -> %s", dst, g))
			}
		case w != g:
			d = append(d, fmt.Sprintf("%s: %s -> %s", dst, w, g))
		}
	}
	for _, dst := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[dst]; !ok {
			d = append(d, fmt.Sprintf("%s mounted (%s)", dst, got[dst]))
		}
	}
	return strings.Join(d, ", ")
}

func cleanSource(typ, src string) string {
	if typ == "bind" && src != "" {
		return path.Clean(src)
	}
	return src
}

func hasKey(m map[string]struct{}, dst string) bool {
	for k := range m {
		if path.Clean(k) == dst {
			return true
		}
	}
	return false
}

// networksDrift compares the networks the container is attached to, with
// their addresses and aliases, with the spec's. The engine adds the
// container's short ID (and, on newer engines, its name) as aliases.
func (in *driftInput) networksDrift() string {
	want := in.spec.Networks
	if len(want) == 0 {
		want = []lab.NetworkAttachSpec{{Network: "bridge"}}
	}
	got := map[string]*network.EndpointSettings{}
	if in.info.NetworkSettings != nil {
		got = in.info.NetworkSettings.Networks
	}
	name := strings.TrimPrefix(in.info.Name, "/")
	short := in.info.ID
	if len(short) > 12 {
		short = short[:12]
	}
	var d []string
	wanted := map[string]bool{}
	for _, n := range want {
		wanted[n.Network] = true
		ep, ok := got[n.Network]
		if !ok || ep == nil {
			d = append(d, n.Network+" disconnected")
			continue
		}
		addr := ""
		if ep.IPAMConfig != nil {
			addr = ep.IPAMConfig.IPv4Address
		}
		if addr != n.IPv4Address {
			d = append(d, fmt.Sprintf("%s: address %q -> %q", n.Network, n.IPv4Address, addr))
		}
		var aliases []string
		for _, a := range ep.Aliases {
			if a != short && a != name {
				aliases = append(aliases, a)
			}
		}
		if !sameSet(n.Aliases, aliases) {
			d = append(d, fmt.Sprintf("%s: aliases [%s] -> [%s]", n.Network, strings.Join(sorted(n.Aliases), " "), strings.Join(sorted(aliases), " ")))
		}
	}
	for _, n := range slices.Sorted(maps.Keys(got)) {
		if !wanted[n] {
			d = append(d, n+" connected")
		}
	}
	return strings.Join(d, ", ")
}

// sameImageRef compares image references in normal form: "redis" is
// "docker.io/library/redis:latest".
func sameImageRef(a, b string) bool { return normalRef(a) == normalRef(b) }

func normalRef(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	name, digest, hasDigest := strings.Cut(ref, "@")
	if i := strings.LastIndex(name, ":"); !hasDigest && i <= strings.LastIndex(name, "/") {
		name += ":latest"
	}
	first, _, hasSlash := strings.Cut(name, "/")
	switch {
	case !hasSlash:
		name = "docker.io/library/" + name
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		name = "docker.io/" + name
	}
	if hasDigest {
		return name + "@" + digest
	}
	return name
}

func normCaps(cs []string) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
	}
	return out
}

// byteSize renders a memory limit: 0 is none.
func byteSize(n int64) string {
	if n == 0 {
		return "none"
	}
	for _, u := range []struct {
		size int64
		unit string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.unit)
		}
	}
	return fmt.Sprintf("%dB", n)
}

func orElse(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func sameSet(a, b []string) bool {
	return slices.Equal(sorted(slices.Compact(sorted(a))), sorted(slices.Compact(sorted(b))))
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}
