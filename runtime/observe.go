package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/labsync/labsync/lab"
)

// Observed is what a lab has on the Docker host, read from labels alone.
type Observed struct {
	Containers []ObservedContainer
	Networks   []ObservedNetwork
	Volumes    []ObservedVolume
	// Images maps every local image tag to its image ID.
	Images map[string]string
}

// ObservedContainer is one managed container.
type ObservedContainer struct {
	ID     string
	Name   string
	Kind   lab.Kind
	Object string
	Hash   string
	// Schema is the lab.SchemaVersion the container was made under.
	Schema   string
	Fields   map[string]string
	Revision string
	// State is Docker's: created, running, paused, restarting, exited, dead.
	State string
	// Status is Docker's human status, e.g. "Exited (1) 2 minutes ago".
	Status string
	// Health is healthy, unhealthy, starting, or empty without a check.
	Health  string
	Image   string
	ImageID string
	// Aside marks a container set aside by an unfinished recreate.
	Aside bool
	// Device is the device address an agent drives.
	Device string
	// Volumes are the named volumes the container mounts; Networks the
	// networks it is attached to.
	Volumes  []string
	Networks []string
	// Created is when the container was made.
	Created time.Time
	// Lab and Source are the lab that made the container and its
	// repository (LabelSource; empty on containers made before labsync
	// stamped it).
	Lab    string
	Source string
	// ComposeProject and ComposeService are Compose's labels, on a
	// container labsync did not make (see Foreign).
	ComposeProject string
	ComposeService string
}

// ObservedNetwork is one managed network.
type ObservedNetwork struct {
	ID     string
	Name   string
	Object string
	Hash   string
}

// ObservedVolume is one managed volume.
type ObservedVolume struct {
	Name   string
	Object string
	Hash   string
	// AgentBinary marks labsync's own volume of labsync-agent for agent
	// containers: never declared in the repository.
	AgentBinary bool
}

func labFilter(labName string) filters.Args {
	return filters.NewArgs(
		filters.Arg("label", LabelManaged+"=true"),
		filters.Arg("label", LabelLab+"="+labName),
	)
}

// LabsOf returns the names of the labs whose containers on this engine
// carry source as their LabelSource, with how many containers each has.
// One list call.
func (c *Client) LabsOf(ctx context.Context, source string) (map[string]int, error) {
	f := filters.NewArgs(filters.Arg("label", LabelManaged+"=true"), filters.Arg("label", LabelSource+"="+source))
	cs, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers of %s: %w", source, err)
	}
	out := map[string]int{}
	for _, s := range cs {
		out[s.Labels[LabelLab]]++
	}
	return out, nil
}

// Observe lists everything labelled for labName: containers, networks and
// volumes with one filtered call each, and the local image tags with one
// more. Objects without both labels are never seen.
func (c *Client) Observe(ctx context.Context, labName string) (*Observed, error) {
	f := labFilter(labName)
	cs, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	obs := &Observed{Images: map[string]string{}}
	for _, s := range cs {
		obs.Containers = append(obs.Containers, observedContainer(s))
	}
	sort.Slice(obs.Containers, func(i, j int) bool { return obs.Containers[i].Name < obs.Containers[j].Name })
	ns, err := c.api.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	for _, n := range ns {
		obs.Networks = append(obs.Networks, ObservedNetwork{ID: n.ID, Name: n.Name, Object: n.Labels[LabelObject], Hash: n.Labels[LabelHash]})
	}
	sort.Slice(obs.Networks, func(i, j int) bool { return obs.Networks[i].Name < obs.Networks[j].Name })
	vs, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	for _, v := range vs.Volumes {
		_, agentBin := v.Labels[LabelAgentBinary]
		obs.Volumes = append(obs.Volumes, ObservedVolume{Name: v.Name, Object: v.Labels[LabelObject], Hash: v.Labels[LabelHash], AgentBinary: agentBin})
	}
	sort.Slice(obs.Volumes, func(i, j int) bool { return obs.Volumes[i].Name < obs.Volumes[j].Name })
	imgs, err := c.api.ImageList(ctx, image.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	for _, im := range imgs {
		for _, t := range im.RepoTags {
			obs.Images[t] = im.ID
		}
	}
	return obs, nil
}

func observedContainer(s container.Summary) ObservedContainer {
	name := ""
	if len(s.Names) > 0 {
		name = strings.TrimPrefix(s.Names[0], "/")
	}
	oc := ObservedContainer{
		ID:       s.ID,
		Name:     name,
		Kind:     lab.Kind(s.Labels[LabelKind]),
		Object:   s.Labels[LabelObject],
		Hash:     s.Labels[LabelHash],
		Schema:   s.Labels[LabelSchema],
		Revision: s.Labels[LabelRevision],
		State:    string(s.State),
		Status:   s.Status,
		Health:   healthFromStatus(s.Status),
		Image:    s.Image,
		ImageID:  s.ImageID,
		Aside:    strings.HasSuffix(name, AsideSuffix),
		Device:   s.Labels[LabelDevice],
		Created:  time.Unix(s.Created, 0),
		Lab:      s.Labels[LabelLab],
		Source:   s.Labels[LabelSource],
	}
	for _, m := range s.Mounts {
		if m.Type == "volume" && m.Name != "" {
			oc.Volumes = append(oc.Volumes, m.Name)
		}
	}
	if s.NetworkSettings != nil {
		for name := range s.NetworkSettings.Networks {
			oc.Networks = append(oc.Networks, name)
		}
		sort.Strings(oc.Networks)
	}
	if f := s.Labels[LabelFields]; f != "" {
		_ = json.Unmarshal([]byte(f), &oc.Fields) // an unreadable label only loses detail in reasons
	}
	return oc
}

// healthFromStatus reads the health of a container from its list status.
// The list API of engines before 1.52 reports health only inside this
// human string ("Up 3 minutes (healthy)"), so it is the one source without
// an inspect call per container.
func healthFromStatus(status string) string {
	switch {
	case strings.Contains(status, "(healthy)"):
		return "healthy"
	case strings.Contains(status, "(unhealthy)"):
		return "unhealthy"
	case strings.Contains(status, "(health: starting)"):
		return "starting"
	}
	return ""
}
