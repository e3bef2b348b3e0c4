package runtime

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/labsync/labsync/lab"
)

func objectLabels(labName, object, hash string) map[string]string {
	return map[string]string{
		LabelManaged: "true",
		LabelLab:     labName,
		LabelObject:  object,
		LabelHash:    hash,
		LabelSchema:  lab.SchemaVersion,
	}
}

// CreateNetwork creates a managed network.
func (c *Client) CreateNetwork(ctx context.Context, labName string, n lab.NetworkSpec) error {
	opts := network.CreateOptions{
		Driver:  n.Driver,
		Options: n.DriverOpts,
		Labels:  objectLabels(labName, n.Key, n.Hash),
	}
	if len(n.IPAM) > 0 {
		opts.IPAM = &network.IPAM{}
		for _, p := range n.IPAM {
			opts.IPAM.Config = append(opts.IPAM.Config, network.IPAMConfig{Subnet: p.Subnet, Gateway: p.Gateway, IPRange: p.IPRange})
		}
	}
	if _, err := c.api.NetworkCreate(ctx, n.Name, opts); err != nil {
		if cerrdefs.IsConflict(err) {
			return fmt.Errorf("create network %s: a network of that name exists and labsync does not manage it; rename or remove it", n.Name)
		}
		return fmt.Errorf("create network %s: %w", n.Name, err)
	}
	return nil
}

// RemoveNetwork removes a managed network.
func (c *Client) RemoveNetwork(ctx context.Context, id string) error {
	if err := c.api.NetworkRemove(ctx, id); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove network: %w", err)
	}
	return nil
}

// CreateVolume creates a managed named volume.
func (c *Client) CreateVolume(ctx context.Context, labName string, v lab.VolumeSpec) error {
	// Creating an existing volume returns it unchanged, labels and all, so
	// check first that the name is free: a volume labsync did not create is
	// never used as if it were its own.
	if existing, err := c.api.VolumeInspect(ctx, v.Name); err == nil {
		if existing.Labels[LabelManaged] != "true" || existing.Labels[LabelLab] != labName {
			return fmt.Errorf("create volume %s: a volume of that name exists and labsync does not manage it; rename or remove it", v.Name)
		}
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect volume %s: %w", v.Name, err)
	}
	_, err := c.api.VolumeCreate(ctx, volume.CreateOptions{
		Name:       v.Name,
		Driver:     v.Driver,
		DriverOpts: v.DriverOpts,
		Labels:     objectLabels(labName, v.Key, v.Hash),
	})
	if err != nil {
		return fmt.Errorf("create volume %s: %w", v.Name, err)
	}
	return nil
}
