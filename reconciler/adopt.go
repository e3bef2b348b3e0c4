package reconciler

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Taking over what labsync did not make. A lab that ran as a compose
// project, with agents made by a master container, has containers with
// the names labsync uses, volumes with the lab's data and networks with
// fixed addresses. labsync looks for them only when a plan creates
// something (or while adopting), lists them as blocked, and with Adopt
// replaces the containers stop-first and reuses the volumes and networks
// as they are.

// ForeignLister lists what labsync did not make: runtime.Client.Foreign.
type ForeignLister func(ctx context.Context, o runtime.ForeignOptions) (*runtime.Foreign, error)

// PlanHost plans as Plan does and, when the plan creates something (or
// opts.Adopt is set), looks for what labsync did not make in its way (one
// to four list calls) and plans again with it. A plan that creates nothing
// costs no call.
func PlanHost(ctx context.Context, desired *lab.Desired, observed *runtime.Observed, opts PlanOptions, foreign ForeignLister) (*Changeset, error) {
	p := Plan(desired, observed, opts)
	q := p.ForeignQuery()
	if opts.Adopt {
		// Also the containers an interrupted takeover set aside, and
		// those of held SUTs, to say they are kept.
		for _, c := range desired.Containers {
			if !slices.Contains(q.Names, c.ContainerName) {
				q.Names = append(q.Names, c.ContainerName)
			}
		}
		for name := range desired.Held {
			q.Names = append(q.Names, desired.ContainerPrefix+name)
		}
		sort.Strings(q.Names)
	}
	if q.Empty() || foreign == nil {
		return p, nil
	}
	f, err := foreign(ctx, q)
	if err != nil {
		return nil, err
	}
	opts.Foreign = f
	return Plan(desired, observed, opts), nil
}

// ForeignQuery says what to look for before a plan creates something: the
// names it creates containers, volumes and networks under, and the compose
// project the lab ran as. It is empty for a plan that creates nothing.
func (p *Changeset) ForeignQuery() runtime.ForeignOptions {
	var o runtime.ForeignOptions
	services := false
	for _, a := range p.Actions {
		switch a.Kind {
		case Create:
			o.Names = append(o.Names, a.Target)
			services = services || a.ObjectKind == string(lab.KindService)
		case CreateVolume:
			o.Volumes = append(o.Volumes, a.Target)
		case CreateNetwork:
			o.Networks = append(o.Networks, a.Target)
		}
	}
	if services && p.desired != nil {
		o.ComposeProject = p.desired.ComposeProject
	}
	return o
}

// adoptOrBlock plans a declared network or volume that exists but that
// labsync did not make: reused with adopt, else blocked. subnets are the
// network's declared subnets, and have is what the existing one has: a
// network of other subnets is never reused (the lab's static addresses
// would not fit). It reports whether name is such a one.
func (p *Changeset) adoptOrBlock(kind, key, name string, foreign []string, adopt bool, subnets, have []string) (handled bool) {
	if !slices.Contains(foreign, name) {
		return false
	}
	if kind == KindNetwork && len(subnets) > 0 && !subnetsWithin(subnets, have) {
		reason := fmt.Sprintf("network %s exists and was not made by labsync, with subnet %s where the lab declares %s: declare its subnet to reuse it (with --adopt), or remove the old network",
			name, strings.Join(have, ", "), strings.Join(subnets, ", "))
		p.blocked[name] = "labsync did not make it and its subnet is not the declared one"
		p.Blocked = append(p.Blocked, Blocked{Kind: kind, Object: key, By: name, Reason: reason})
		return true
	}
	what := "network " + name + " exists and was not made by labsync"
	act := AdoptNetwork
	if kind == KindVolume {
		what = "volume " + name + " exists and was not made by labsync"
		act = AdoptVolume
	}
	if adopt {
		reason := what + ": reused as it is, with its data, never emptied"
		if kind == KindNetwork {
			reason = what + ": the lab's containers join it as it is (its subnet and settings are kept)"
		}
		p.add(Action{Kind: act, ObjectKind: kind, Object: key, Target: name, Reasons: []string{reason}})
		return true
	}
	p.blocked[name] = "labsync did not make it; apply with --adopt to reuse it"
	p.Blocked = append(p.Blocked, Blocked{Kind: kind, Object: key, By: name, Reason: what + "; apply with --adopt to reuse it"})
	return true
}

// subnetsWithin reports whether every declared subnet is one the existing
// network has, compared as prefixes (case and host bits do not matter).
// The network may have more: Docker gives a dual-stack network a pool of
// the family the lab left out.
func subnetsWithin(declared, have []string) bool {
	existing := map[netip.Prefix]bool{}
	for _, h := range have {
		if pfx, err := netip.ParsePrefix(h); err == nil {
			existing[pfx.Masked()] = true
		}
	}
	for _, d := range declared {
		pfx, err := netip.ParsePrefix(d)
		if err != nil || !existing[pfx.Masked()] {
			return false
		}
	}
	return true
}

// inTheWay plans what stands in the way of creating spec, when anything
// does: a container labsync did not make with its name (the old stack's
// agents) or of its compose service (the old stack's services), or a
// volume or network it uses that labsync did not make. With Adopt the
// container is taken over stop-first; without, the object is blocked and
// the plan says how to take it over.
func (p *Changeset) inTheWay(spec *lab.ContainerSpec, base Action, opts PlanOptions) bool {
	for _, m := range spec.Mounts {
		if m.Type == "volume" && p.blocked[m.Source] != "" {
			p.Blocked = append(p.Blocked, Blocked{Kind: string(spec.Kind), Object: spec.Name, By: m.Source,
				Reason: fmt.Sprintf("mounts volume %s: %s", m.Source, p.blocked[m.Source])})
			return true
		}
	}
	for _, n := range spec.Networks {
		if p.blocked[n.Network] != "" {
			p.Blocked = append(p.Blocked, Blocked{Kind: string(spec.Kind), Object: spec.Name, By: n.Network,
				Reason: fmt.Sprintf("joins network %s: %s", n.Network, p.blocked[n.Network])})
			return true
		}
	}
	if opts.Foreign == nil {
		return false
	}
	var theirs []runtime.ObservedContainer
	for _, c := range opts.Foreign.Containers {
		byName := c.Name == spec.ContainerName || c.Name == spec.ContainerName+runtime.AsideSuffix
		byService := spec.Kind == lab.KindService && p.desired.ComposeProject != "" &&
			c.ComposeProject == p.desired.ComposeProject && c.ComposeService == spec.Name
		if byName || byService {
			theirs = append(theirs, c)
		}
	}
	if len(theirs) == 0 {
		return false
	}
	// The one to replace: the one with the name, else a running one.
	sort.SliceStable(theirs, func(i, j int) bool {
		a, b := theirs[i], theirs[j]
		if (a.Name == spec.ContainerName) != (b.Name == spec.ContainerName) {
			return a.Name == spec.ContainerName
		}
		return a.State == "running" && b.State != "running"
	})
	old := theirs[0]
	what := fmt.Sprintf("container %s (image %s, %s", old.Name, old.Image, old.State)
	if old.ComposeProject != "" {
		what += ", compose project " + old.ComposeProject
	}
	what += ") was not made by labsync"
	if !opts.Adopt {
		p.Blocked = append(p.Blocked, Blocked{Kind: string(spec.Kind), Object: spec.Name, By: old.Name,
			Reason: what + "; apply with --adopt (or labsync serve --adopt) to take it over: it is stopped and set aside, then removed once the new one runs"})
		return true
	}
	a := base
	a.Kind = Adopt
	a.Old = &old
	a.Leftovers = theirs[1:]
	a.Reasons = []string{what + ": taken over stop-first, set aside until the new container runs, then removed"}
	p.add(a)
	return true
}

// foreignAside returns, while adopting, the container of an interrupted
// takeover that labsync set aside for spec: it carries no labels, so only
// the lookup finds it. The plan then finishes or restores the takeover as
// it does an interrupted recreate.
func foreignAside(spec *lab.ContainerSpec, opts PlanOptions) []runtime.ObservedContainer {
	if !opts.Adopt || opts.Foreign == nil {
		return nil
	}
	for _, c := range opts.Foreign.Containers {
		if c.Name == spec.ContainerName+runtime.AsideSuffix {
			c.Kind, c.Object, c.Aside = spec.Kind, spec.Name, true
			return []runtime.ObservedContainer{c}
		}
	}
	return nil
}

func foreignSubnets(f *runtime.Foreign, name string) []string {
	if f == nil {
		return nil
	}
	return f.NetworkSubnets[name]
}
