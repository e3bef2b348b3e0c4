// Package reconciler compares the desired state of a lab with what runs on
// its Docker host, plans the actions that close the gap (each with a reason)
// and applies them in order, with bounded parallelism, rollback of failed
// recreates and a guard against mass removal.
package reconciler

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// ActionKind names what an action does.
type ActionKind string

// Actions, in the order they are applied.
const (
	CreateNetwork ActionKind = "create-network"
	CreateVolume  ActionKind = "create-volume"
	BuildImage    ActionKind = "build-image"
	Create        ActionKind = "create"
	Recreate      ActionKind = "recreate"
	Finish        ActionKind = "finish-recreate"
	Adopt         ActionKind = "adopt"
	AdoptVolume   ActionKind = "adopt-volume"
	AdoptNetwork  ActionKind = "adopt-network"
	Restore       ActionKind = "restore"
	Stop          ActionKind = "stop"
	Start         ActionKind = "start"
	Remove        ActionKind = "remove"
	RemoveNetwork ActionKind = "remove-network"
)

// Object kinds besides lab.KindAgent and lab.KindService.
const (
	KindNetwork = "network"
	KindVolume  = "volume"
	KindImage   = "image"
)

// Action is one step of a plan, with the reasons for it.
type Action struct {
	Kind       ActionKind `json:"action"`
	ObjectKind string     `json:"kind"`
	Object     string     `json:"object"`
	// Target is the Docker name of what is acted on: container, network,
	// volume or image tag.
	Target  string   `json:"target"`
	Reasons []string `json:"reasons"`

	Spec    *lab.ContainerSpec `json:"-"`
	Network *lab.NetworkSpec   `json:"-"`
	Volume  *lab.VolumeSpec    `json:"-"`
	Image   *lab.ImageSpec     `json:"-"`
	// Old is the container replaced, started, restored, stopped or removed.
	Old *runtime.ObservedContainer `json:"-"`
	// New is the container a Finish action confirms.
	New *runtime.ObservedContainer `json:"-"`
	// Leftovers are containers of the same object to remove first: copies
	// set aside by an interrupted recreate, or duplicates.
	Leftovers []runtime.ObservedContainer `json:"-"`
	// NetworkID is the network removed by RemoveNetwork.
	NetworkID string `json:"-"`
}

// Changeset is the ordered list of actions that converges a host, and what was
// found not to need any.
type Changeset struct {
	Lab       string   `json:"lab"`
	Revision  string   `json:"revision"`
	Actions   []Action `json:"actions"`
	Unchanged []string `json:"unchanged"`
	// Warnings are things a human should know that no action fixes.
	Warnings []string `json:"warnings,omitempty"`
	// PruneBlocked is set when the mass-removal guard kept orphans.
	PruneBlocked bool `json:"prune_blocked,omitempty"`
	// Held are the agents left as they are until their files are fixed:
	// neither created, changed nor removed.
	Held []HeldAgent `json:"held,omitempty"`
	// Blocked are the objects labsync cannot create because something it
	// did not make has their name (or is their compose service): taken
	// over only with --adopt.
	Blocked []Blocked `json:"blocked,omitempty"`

	desired *lab.Desired
	// blocked are the networks and volumes in the way, by Docker name,
	// with why.
	blocked map[string]string
	// devices are the observed containers that may drive each device.
	devices map[string][]runtime.ObservedContainer
}

// Blocked is an object that a container or volume labsync did not make
// stands in the way of.
type Blocked struct {
	Kind   string `json:"kind"`
	Object string `json:"object"`
	// By is the container or volume in the way.
	By     string `json:"by"`
	Reason string `json:"reason"`
}

// HeldAgent is an agent a plan leaves alone, and why.
type HeldAgent struct {
	Name string `json:"name"`
	// Container is the agent's container, left as it runs; empty when it
	// has none.
	Container string   `json:"container,omitempty"`
	Reasons   []string `json:"reasons"`
}

// Empty reports whether the plan has no actions.
func (p *Changeset) Empty() bool { return len(p.Actions) == 0 }

// Counts returns the number of actions of each kind.
func (p *Changeset) Counts() map[ActionKind]int {
	m := map[ActionKind]int{}
	for _, a := range p.Actions {
		m[a.Kind]++
	}
	return m
}

// PlanOptions tune Plan.
type PlanOptions struct {
	// ForcePrune removes orphans even when the mass-removal guard trips.
	ForcePrune bool
	// Recreate maps agents to recreate although they are in sync (a
	// clean slate) to the reason.
	Recreate map[string]string
	// Foreign is what labsync did not make but would collide with (see
	// ForeignQuery); nil when not looked at.
	Foreign *runtime.Foreign
	// Adopt takes over what Foreign holds: containers are replaced
	// stop-first (kept aside until the new one runs), volumes reused with
	// their data. Without it they block the objects they are in the way of.
	Adopt bool
	// Drift maps "kind/object" to what DeepDrift found changed by hand in
	// its container, in sync by its labels: that container is recreated.
	// An entry holds for the container inspected only, so a map kept from
	// the last check is safe to plan with later.
	Drift map[string]Drift
}

type objKey struct {
	kind lab.Kind
	name string
}

// Plan compares desired with observed and returns the actions that make the
// host match, each with its reasons. It is pure and deterministic.
func Plan(desired *lab.Desired, observed *runtime.Observed, opts PlanOptions) *Changeset {
	p := &Changeset{Lab: desired.Lab, Revision: desired.Revision, Actions: []Action{}, Unchanged: []string{}, desired: desired,
		devices: devicesOf(observed.Containers)}
	byObject := map[objKey][]runtime.ObservedContainer{}
	for _, c := range observed.Containers {
		k := objKey{c.Kind, c.Object}
		byObject[k] = append(byObject[k], c)
	}

	obsNets := map[string]runtime.ObservedNetwork{}
	for _, n := range observed.Networks {
		obsNets[n.Name] = n
	}
	// A network labsync did not make, taken over earlier: the lab's
	// containers are attached to it.
	attached := map[string]bool{}
	for _, c := range observed.Containers {
		for _, n := range c.Networks {
			attached[n] = true
		}
	}
	var foreignNets, foreignVols []string
	if opts.Foreign != nil {
		foreignNets, foreignVols = opts.Foreign.Networks, opts.Foreign.Volumes
	}
	p.blocked = map[string]string{}
	for i := range desired.Networks {
		n := &desired.Networks[i]
		o, ok := obsNets[n.Name]
		switch {
		case !ok && attached[n.Name]:
			p.Unchanged = append(p.Unchanged, "network/"+n.Name)
		case !ok && p.adoptOrBlock(KindNetwork, n.Key, n.Name, foreignNets, opts.Adopt, n.Subnets(), foreignSubnets(opts.Foreign, n.Name)):
		case !ok:
			p.add(Action{Kind: CreateNetwork, ObjectKind: KindNetwork, Object: n.Key, Target: n.Name, Network: n, Reasons: []string{"declared, not on this host"}})
		case o.Hash != n.Hash:
			p.Warnings = append(p.Warnings, fmt.Sprintf("network %s differs from its declaration; labsync does not recreate networks that containers use: remove it (docker network rm %s) after stopping its containers, and the next apply recreates it", n.Name, n.Name))
		default:
			p.Unchanged = append(p.Unchanged, "network/"+n.Name)
		}
	}
	obsVols := map[string]bool{}
	for _, v := range observed.Volumes {
		obsVols[v.Name] = true
	}
	// A volume labsync did not make, taken over earlier: its containers
	// of this lab mount it.
	for _, c := range observed.Containers {
		for _, v := range c.Volumes {
			obsVols[v] = true
		}
	}
	for i := range desired.Volumes {
		v := &desired.Volumes[i]
		if obsVols[v.Name] {
			p.Unchanged = append(p.Unchanged, "volume/"+v.Name)
			continue
		}
		if p.adoptOrBlock(KindVolume, v.Key, v.Name, foreignVols, opts.Adopt, nil, nil) {
			continue
		}
		p.add(Action{Kind: CreateVolume, ObjectKind: KindVolume, Object: v.Key, Target: v.Name, Volume: v, Reasons: []string{"declared, not on this host"}})
	}
	for i := range desired.Images {
		img := &desired.Images[i]
		if _, ok := observed.Images[img.Tag]; ok {
			continue
		}
		p.add(Action{Kind: BuildImage, ObjectKind: KindImage, Object: img.Context.Dir, Target: img.Tag, Image: img,
			Reasons: []string{fmt.Sprintf("context %s has no image yet (digest %s)", img.Context.Dir, img.Context.Digest[:12])}})
	}

	declared := map[objKey]bool{}
	heldDevices := p.holdAgents(desired, byObject, declared, opts.Foreign)
	for i := range desired.Containers {
		spec := &desired.Containers[i]
		k := objKey{spec.Kind, spec.Name}
		declared[k] = true
		if owner := heldDevices[spec.Device]; spec.Kind == lab.KindAgent && spec.Device != "" && owner != "" && owner != spec.Name {
			// The held agent's container may drive the device still:
			// never start a second agent on it.
			p.hold(spec.Name, byObject[k], fmt.Sprintf("device %s is driven by the container of %s, which is held; this agent waits until %s is fixed or gone", spec.Device, owner, owner))
			continue
		}
		p.planContainer(spec, append(byObject[k], foreignAside(spec, opts)...), observed.Images, opts)
	}
	sort.Slice(p.Held, func(i, j int) bool { return p.Held[i].Name < p.Held[j].Name })

	p.planPrune(desired, observed, byObject, declared, opts)
	sortActions(p.Actions, desired)
	sort.Strings(p.Unchanged)
	return p
}

func (p *Changeset) add(a Action) { p.Actions = append(p.Actions, a) }

// holdAgents records the held agents of desired, marks them declared (so
// their containers are not orphans, and the prune guard counts them as
// present), and returns the devices their containers drive.
func (p *Changeset) holdAgents(desired *lab.Desired, byObject map[objKey][]runtime.ObservedContainer, declared map[objKey]bool, foreign *runtime.Foreign) map[string]string {
	devices := map[string]string{}
	names := make([]string, 0, len(desired.Held))
	for name := range desired.Held {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		k := objKey{lab.KindAgent, name}
		declared[k] = true
		var reasons []string
		for _, d := range desired.Held[name] {
			reasons = append(reasons, d.String())
		}
		found := byObject[k]
		if foreign != nil && len(found) == 0 {
			// The old stack's container of a held SUT: kept as it is too.
			for _, c := range foreign.Containers {
				if c.Name == desired.ContainerPrefix+name {
					found = append(found, c)
				}
			}
		}
		p.hold(name, found, reasons...)
		for _, c := range byObject[k] {
			if c.Device != "" {
				devices[c.Device] = name
			}
		}
	}
	return devices
}

// hold records a held agent with its containers as they are.
func (p *Changeset) hold(name string, found []runtime.ObservedContainer, reasons ...string) {
	h := HeldAgent{Name: name, Reasons: reasons}
	for _, c := range found {
		if !c.Aside {
			h.Container = c.Name
		}
	}
	p.Held = append(p.Held, h)
}

func (p *Changeset) planContainer(spec *lab.ContainerSpec, found []runtime.ObservedContainer, images map[string]string, opts PlanOptions) {
	force := opts.Recreate
	var primary, aside *runtime.ObservedContainer
	// others are duplicates and containers of an old name; the
	// never-started ones come last, and are never taken for the object's
	// container.
	var others, unstarted []runtime.ObservedContainer
	for i := range found {
		c := &found[i]
		switch {
		case neverStarted(c):
			unstarted = append(unstarted, *c)
		case c.Name == spec.ContainerName && primary == nil:
			primary = c
		case c.Name == spec.ContainerName+runtime.AsideSuffix && aside == nil:
			aside = c
		default:
			others = append(others, *c)
		}
	}
	renamed := len(others)
	others = append(others, unstarted...)
	base := Action{ObjectKind: string(spec.Kind), Object: spec.Name, Target: spec.ContainerName, Spec: spec}
	switch {
	case primary != nil && aside != nil && len(explain(primary, spec, images)) == 0:
		// A recreate stopped after starting the new container: confirm
		// it before the old one goes, or restore the old one.
		a := base
		a.Kind = Finish
		a.Old, a.New, a.Leftovers = aside, primary, others
		a.Reasons = []string{"a recreate was interrupted: check the new container, then remove the old one (or restore it)"}
		p.add(a)
	case primary != nil:
		var leftovers []runtime.ObservedContainer
		if aside != nil {
			leftovers = append(leftovers, *aside)
		}
		leftovers = append(leftovers, others...)
		reasons := explain(primary, spec, images)
		if primary.Lab != "" && primary.Lab != p.desired.Lab {
			// Taken over from the lab's old name (ControllerOptions.AdoptLab).
			reasons = append([]string{fmt.Sprintf("container belongs to lab %s, now %s: taken over", primary.Lab, p.desired.Lab)}, reasons...)
		}
		if why, ok := force[spec.Name]; ok && len(reasons) == 0 && spec.Kind == lab.KindAgent {
			reasons = []string{why}
		}
		if d, ok := opts.Drift[string(spec.Kind)+"/"+spec.Name]; ok && len(reasons) == 0 && aside == nil && d.Container == primary.ID {
			reasons = append([]string(nil), d.Reasons...)
		}
		a := base
		a.Old = primary
		a.Leftovers = leftovers
		switch {
		case len(reasons) > 0:
			a.Kind, a.Reasons = Recreate, reasons
		case primary.State != "running":
			// The state, not Docker's "Exited (1) 2 minutes ago": reasons
			// must not change while nothing does.
			a.Kind, a.Reasons = Start, []string{fmt.Sprintf("container is %s", primary.State)}
		case len(leftovers) > 0:
			a.Kind, a.Reasons = Remove, leftoverReasons(leftovers)
			a.Target, a.Old, a.Spec = leftovers[0].Name, nil, nil
		default:
			if primary.Health == "unhealthy" {
				p.Warnings = append(p.Warnings, fmt.Sprintf("%s %s is unhealthy (%s)", spec.Kind, spec.Name, primary.Status))
			}
			p.Unchanged = append(p.Unchanged, string(spec.Kind)+"/"+spec.Name)
			return
		}
		p.add(a)
	case aside != nil:
		a := base
		a.Old = aside
		a.Leftovers = others
		if reasons := explain(aside, spec, images); len(reasons) > 0 {
			a.Kind = Recreate
			a.Reasons = append([]string{"finish a recreate that was interrupted"}, reasons...)
		} else {
			a.Kind = Restore
			a.Reasons = []string{"restore the container set aside by an interrupted recreate"}
		}
		if len(unstarted) > 0 {
			a.Reasons = append(a.Reasons, leftoverReasons(unstarted)...)
		}
		p.add(a)
	case renamed > 0:
		a := base
		a.Kind = Recreate
		a.Old = &others[0]
		a.Leftovers = others[1:]
		a.Reasons = []string{fmt.Sprintf("container name changes from %s to %s", others[0].Name, spec.ContainerName)}
		for _, r := range explain(&others[0], spec, images) {
			if r != specChanged {
				a.Reasons = append(a.Reasons, r)
			}
		}
		p.add(a)
	default:
		if p.inTheWay(spec, base, opts) {
			return
		}
		a := base
		a.Kind = Create
		a.Reasons = []string{"declared in " + sourceList(spec) + ", no container yet"}
		if len(others) > 0 {
			// Only never-started containers: removed first.
			a.Leftovers = others
			a.Reasons = leftoverReasons(others)
		}
		p.add(a)
	}
}

// neverStarted reports whether c was created and never started. Such a
// container may be half-made: labelled with its final spec hash at create,
// but stopped by a crash before its networks, files or labsync-agent were
// added. It never counts as the object's container; it is removed and
// made again. A container set aside was started once: it is the old one.
func neverStarted(c *runtime.ObservedContainer) bool {
	return c.State == "created" && !c.Aside
}

func leftoverReasons(l []runtime.ObservedContainer) []string {
	var out []string
	for _, c := range l {
		if neverStarted(&c) {
			out = append(out, fmt.Sprintf("%s was created but never started: an apply may have stopped while making it", c.Name))
		} else if c.Aside {
			out = append(out, fmt.Sprintf("%s is left over from an interrupted recreate", c.Name))
		} else {
			out = append(out, fmt.Sprintf("%s is a duplicate of this object", c.Name))
		}
	}
	return out
}

func sourceList(spec *lab.ContainerSpec) string {
	if len(spec.Sources) == 0 {
		return "the lab"
	}
	return spec.Sources[0]
}

func (p *Changeset) planPrune(desired *lab.Desired, observed *runtime.Observed, byObject map[objKey][]runtime.ObservedContainer, declared map[objKey]bool, opts PlanOptions) {
	var orphans []Action
	observedAgents, orphanAgents, observedServices := 0, 0, 0
	var orphanServices []string
	keys := make([]objKey, 0, len(byObject))
	for k := range byObject {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].kind != keys[j].kind {
			return keys[i].kind < keys[j].kind
		}
		return keys[i].name < keys[j].name
	})
	for _, k := range keys {
		switch k.kind {
		case lab.KindAgent:
			observedAgents++
		case lab.KindService:
			observedServices++
		}
		if declared[k] {
			continue
		}
		switch k.kind {
		case lab.KindAgent:
			orphanAgents++
		case lab.KindService:
			orphanServices = append(orphanServices, k.name)
		}
		for i := range byObject[k] {
			c := byObject[k][i]
			orphans = append(orphans, Action{Kind: Remove, ObjectKind: string(k.kind), Object: k.name, Target: c.Name, Old: &c,
				Reasons: []string{fmt.Sprintf("%s %s is no longer declared at this revision", k.kind, k.name)}})
		}
	}
	netUsers := map[string]bool{}
	for _, c := range desired.Containers {
		for _, n := range c.Networks {
			netUsers[n.Network] = true
		}
	}
	declaredNets := map[string]bool{}
	for _, n := range desired.Networks {
		declaredNets[n.Name] = true
	}
	for _, n := range observed.Networks {
		if !declaredNets[n.Name] && !netUsers[n.Name] {
			orphans = append(orphans, Action{Kind: RemoveNetwork, ObjectKind: KindNetwork, Object: n.Object, Target: n.Name, NetworkID: n.ID,
				Reasons: []string{"network is no longer declared at this revision"}})
		}
	}
	declaredVols := map[string]bool{}
	for _, v := range desired.Volumes {
		declaredVols[v.Name] = true
	}
	for _, v := range observed.Volumes {
		// labsync's own labsync-agent volume is never declared.
		if !declaredVols[v.Name] && !v.AgentBinary {
			p.Warnings = append(p.Warnings, fmt.Sprintf("volume %s is no longer declared; labsync never deletes volumes, remove it by hand (docker volume rm %s) if its data is not needed", v.Name, v.Name))
		}
	}
	p.stopDeviceConflicts(desired, byObject, declared)
	if len(orphans) == 0 {
		return
	}
	if !desired.Prune.Enabled {
		p.Warnings = append(p.Warnings, fmt.Sprintf("prune is disabled in lab.yaml: %d object(s) no longer declared are kept", len(orphans)))
		return
	}
	if opts.ForcePrune {
		p.Actions = append(p.Actions, orphans...)
		return
	}
	if why, howto := pruneGuard(desired, observed, observedAgents, orphanAgents, observedServices, orphanServices); why != "" {
		p.PruneBlocked = true
		p.Warnings = append(p.Warnings, fmt.Sprintf("prune guard: %s, so nothing is removed. If that is intended, %s", why, howto))
		return
	}
	p.Actions = append(p.Actions, orphans...)
}

// pruneGuard says why the orphans of a revision must not be removed, and
// how to override that; empty when they may. A revision may remove at most
// prune.max_fraction of the agents and of the services on the host
// (rounded down, one is always allowed), never all of the services, and
// never every container of the lab.
func pruneGuard(desired *lab.Desired, observed *runtime.Observed, observedAgents, orphanAgents, observedServices int, orphanServices []string) (why, howto string) {
	frac := desired.Prune.MaxFraction
	howto = "apply with --force-prune or raise prune.max_fraction in lab.yaml"
	if len(desired.Containers) == 0 && len(observed.Containers) > 0 {
		return "this revision declares no containers at all and would empty the lab", "apply with --force-prune"
	}
	var whys []string
	if orphanAgents > allowedRemovals(frac, observedAgents) {
		whys = append(whys, fmt.Sprintf("this revision would remove %d of %d agents, more than prune.max_fraction (%g) allows", orphanAgents, observedAgents, frac))
	}
	n := len(orphanServices)
	switch {
	case n > 0 && n == observedServices:
		// The stack itself goes (a deleted compose file): never on a
		// fraction alone.
		whys = append(whys, fmt.Sprintf("this revision would remove %d of %d services (%s), all of them", n, observedServices, strings.Join(orphanServices, ", ")))
		howto = "apply with --force-prune"
	case n > allowedRemovals(frac, observedServices):
		whys = append(whys, fmt.Sprintf("this revision would remove %d of %d services (%s), more than prune.max_fraction (%g) allows", n, observedServices, strings.Join(orphanServices, ", "), frac))
	}
	return strings.Join(whys, "; "), howto
}

// allowedRemovals is how many of n objects of one kind a revision may
// remove: prune.max_fraction of them, rounded down, and at least one.
func allowedRemovals(frac float64, n int) int {
	return max(int(math.Floor(frac*float64(n))), 1)
}

// stopDeviceConflicts stops, before any agent is created, each running
// orphan agent that drives the device of a declared agent, whatever the
// prune policy: two agents must never drive one device.
func (p *Changeset) stopDeviceConflicts(desired *lab.Desired, byObject map[objKey][]runtime.ObservedContainer, declared map[objKey]bool) {
	owner := map[string]string{}
	for _, c := range desired.Containers {
		if c.Kind == lab.KindAgent && c.Device != "" {
			owner[c.Device] = c.Name
		}
	}
	for k, cs := range byObject {
		if declared[k] || k.kind != lab.KindAgent {
			continue
		}
		for i := range cs {
			c := cs[i]
			if c.Device == "" || owner[c.Device] == "" || !mayRun(c.State) {
				continue
			}
			p.add(Action{Kind: Stop, ObjectKind: string(k.kind), Object: k.name, Target: c.Name, Old: &c,
				Reasons: []string{fmt.Sprintf("drives device %s, which agent %s now has; two agents must never drive one device", c.Device, owner[c.Device])}})
		}
	}
}

// Phases of apply, in order.
const (
	phaseNetworks = iota
	phaseVolumes
	phaseImages
	phaseServices
	phaseDeviceStops
	phaseAgents
	phaseRemovals
	phaseNetworkRemovals
)

// phase orders actions: networks, volumes, images, services, stops of
// agents whose device moved, agents, removals.
func phase(a Action) int {
	switch a.Kind {
	case CreateNetwork:
		return phaseNetworks
	case CreateVolume, AdoptVolume:
		return phaseVolumes
	case AdoptNetwork:
		return phaseNetworks
	case BuildImage:
		return phaseImages
	case RemoveNetwork:
		return phaseNetworkRemovals
	case Stop:
		return phaseDeviceStops
	}
	if a.Kind == Remove && a.Spec == nil {
		return phaseRemovals
	}
	if a.ObjectKind == string(lab.KindService) {
		return phaseServices
	}
	return phaseAgents
}

func sortActions(actions []Action, desired *lab.Desired) {
	order := serviceOrder(desired)
	sort.SliceStable(actions, func(i, j int) bool {
		a, b := actions[i], actions[j]
		if pa, pb := phase(a), phase(b); pa != pb {
			return pa < pb
		}
		if a.ObjectKind == string(lab.KindService) && b.ObjectKind == string(lab.KindService) && phase(a) == phaseServices {
			if oa, ob := order[a.Object], order[b.Object]; oa != ob {
				return oa < ob
			}
		}
		if a.Object != b.Object {
			return a.Object < b.Object
		}
		return a.Target < b.Target
	})
}

// serviceOrder ranks services so that each comes after what it depends on.
func serviceOrder(d *lab.Desired) map[string]int {
	deps := map[string][]string{}
	for _, c := range d.Containers {
		if c.Kind == lab.KindService {
			for _, dep := range c.DependsOn {
				deps[c.Name] = append(deps[c.Name], dep.Name)
			}
		}
	}
	depth := map[string]int{}
	var visit func(n string, seen map[string]bool) int
	visit = func(n string, seen map[string]bool) int {
		if v, ok := depth[n]; ok {
			return v
		}
		if seen[n] {
			return 0 // cycles are rejected by validation
		}
		seen[n] = true
		d := 0
		for _, x := range deps[n] {
			d = max(d, visit(x, seen)+1)
		}
		depth[n] = d
		return d
	}
	for _, c := range d.Containers {
		visit(c.Name, map[string]bool{})
	}
	return depth
}
