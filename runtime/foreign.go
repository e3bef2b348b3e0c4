package runtime

import (
	"context"
	"fmt"
	"sort"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
)

// Compose's labels on the containers it makes.
const (
	LabelComposeProject = "com.docker.compose.project"
	LabelComposeService = "com.docker.compose.service"
)

// Foreign is what labsync did not make but would collide with: containers
// with the names it is about to use (or of the compose project the lab
// ran as), and volumes with the names it is about to create. It is read
// only when a plan creates something, so a pass that changes nothing
// costs no extra call.
type Foreign struct {
	Containers []ObservedContainer
	Volumes    []string
	Networks   []string
	// NetworkSubnets are the subnets of each network in Networks.
	NetworkSubnets map[string][]string
}

// ForeignOptions say what to look for.
type ForeignOptions struct {
	// Names are container names; each is looked for as it is and set
	// aside (with AsideSuffix), as an interrupted takeover leaves it.
	Names []string
	// ComposeProject, when set, also finds the containers of that compose
	// project; Compose's labels say which service each is.
	ComposeProject string
	// Volumes and Networks are volume and network names.
	Volumes  []string
	Networks []string
}

// Empty reports whether there is nothing to look for.
func (o ForeignOptions) Empty() bool {
	return len(o.Names) == 0 && o.ComposeProject == "" && len(o.Volumes) == 0 && len(o.Networks) == 0
}

// Foreign lists the containers and volumes that labsync did not make and
// that carry the names (or the compose project) of o. At most four list
// calls; none for an empty o.
func (c *Client) Foreign(ctx context.Context, o ForeignOptions) (*Foreign, error) {
	out := &Foreign{}
	seen := map[string]bool{}
	add := func(s container.Summary) {
		if s.Labels[LabelManaged] == "true" || seen[s.ID] {
			return
		}
		seen[s.ID] = true
		oc := observedContainer(s)
		oc.Kind, oc.Object, oc.Hash, oc.Revision, oc.Device = "", "", "", "", ""
		oc.ComposeProject, oc.ComposeService = s.Labels[LabelComposeProject], s.Labels[LabelComposeService]
		out.Containers = append(out.Containers, oc)
	}
	if len(o.Names) > 0 {
		want := map[string]bool{}
		f := filters.NewArgs()
		for _, n := range o.Names {
			for _, name := range []string{n, n + AsideSuffix} {
				want[name] = true
				f.Add("name", "^/"+regexpQuote(name)+"$")
			}
		}
		cs, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if err != nil {
			return nil, fmt.Errorf("list containers by name: %w", err)
		}
		for _, s := range cs {
			if len(s.Names) > 0 && want[strings.TrimPrefix(s.Names[0], "/")] {
				add(s)
			}
		}
	}
	if o.ComposeProject != "" {
		cs, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelComposeProject+"="+o.ComposeProject))})
		if err != nil {
			return nil, fmt.Errorf("list containers of compose project %s: %w", o.ComposeProject, err)
		}
		for _, s := range cs {
			add(s)
		}
	}
	if len(o.Volumes) > 0 {
		want := map[string]bool{}
		f := filters.NewArgs()
		for _, v := range o.Volumes {
			want[v] = true
			f.Add("name", v)
		}
		vs, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: f})
		if err != nil {
			return nil, fmt.Errorf("list volumes by name: %w", err)
		}
		for _, v := range vs.Volumes {
			if want[v.Name] && v.Labels[LabelManaged] != "true" {
				out.Volumes = append(out.Volumes, v.Name)
			}
		}
	}
	if len(o.Networks) > 0 {
		want := map[string]bool{}
		f := filters.NewArgs()
		for _, n := range o.Networks {
			want[n] = true
			f.Add("name", n)
		}
		ns, err := c.api.NetworkList(ctx, network.ListOptions{Filters: f})
		if err != nil {
			return nil, fmt.Errorf("list networks by name: %w", err)
		}
		for _, n := range ns {
			if want[n.Name] && n.Labels[LabelManaged] != "true" {
				out.Networks = append(out.Networks, n.Name)
				if out.NetworkSubnets == nil {
					out.NetworkSubnets = map[string][]string{}
				}
				for _, p := range n.IPAM.Config {
					if p.Subnet != "" {
						out.NetworkSubnets[n.Name] = append(out.NetworkSubnets[n.Name], p.Subnet)
					}
				}
			}
		}
	}
	sort.Slice(out.Containers, func(i, j int) bool { return out.Containers[i].Name < out.Containers[j].Name })
	sort.Strings(out.Volumes)
	sort.Strings(out.Networks)
	return out, nil
}

// AdoptNetwork checks that a network labsync did not make exists, to
// attach the lab's containers to it as it is (the old stack's network, its
// subnet and addresses): its labels cannot be changed, so the lab's
// containers on it are the record that it was taken over.
func (c *Client) AdoptNetwork(ctx context.Context, name string) error {
	if _, err := c.api.NetworkInspect(ctx, name, network.InspectOptions{}); err != nil {
		return fmt.Errorf("adopt network %s: %w", name, err)
	}
	c.log.Info("network taken over as it is", "network", name)
	return nil
}

// regexpQuote escapes the characters of a container name that a name
// filter (a regular expression) would read: names hold letters, digits
// and _ . -.
func regexpQuote(s string) string { return strings.ReplaceAll(s, ".", `\.`) }

// AdoptVolume checks that a volume labsync did not make exists, to reuse
// it with its data: labels cannot be added to a volume, so containers of
// the lab that mount it are the record that it was taken over.
func (c *Client) AdoptVolume(ctx context.Context, name string) error {
	v, err := c.api.VolumeInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("adopt volume %s: it is gone", name)
	}
	if err != nil {
		return fmt.Errorf("adopt volume %s: %w", name, err)
	}
	if v.Labels[LabelManaged] == "true" {
		return nil
	}
	c.log.Info("volume taken over with its data", "volume", name)
	return nil
}
