package reconciler

import (
	"context"
	"sort"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// DriftInspector compares containers with their specs field by field:
// runtime.Client is the real one.
type DriftInspector interface {
	InspectDrift(ctx context.Context, checks []runtime.DriftCheck) (map[string][]runtime.FieldDrift, error)
}

var _ DriftInspector = (*runtime.Client)(nil)

// Drift is what DeepDrift found changed by hand in one container.
type Drift struct {
	// Container is the ID of the container inspected: the drift is its
	// own, and says nothing of a container made since.
	Container string `json:"container"`
	// Reasons name the fields, never an env value: "drift: restart policy
	// changed by hand (always -> no)".
	Reasons []string `json:"reasons"`
}

// DeepDrift inspects the containers of desired that observed says are in
// sync (the container of each declared object under its own name, made
// from its current spec, not in the middle of a recreate) and returns,
// keyed "kind/object", those changed by hand while their labels stayed:
// PlanOptions.Drift. It costs one inspect per container and one per
// image, so it runs on the drift schedule, not every pass. On error the
// drift found in the other containers is still returned.
func DeepDrift(ctx context.Context, eng DriftInspector, desired *lab.Desired, observed *runtime.Observed) (map[string]Drift, error) {
	byName := map[string][]runtime.ObservedContainer{}
	for _, c := range observed.Containers {
		byName[c.Name] = append(byName[c.Name], c)
	}
	var checks []runtime.DriftCheck
	keys := map[string]string{}
	for i := range desired.Containers {
		spec := &desired.Containers[i]
		if len(byName[spec.ContainerName+runtime.AsideSuffix]) > 0 {
			continue // a recreate to finish first
		}
		found := byName[spec.ContainerName]
		if len(found) != 1 {
			continue
		}
		c := found[0]
		if c.Kind != spec.Kind || c.Object != spec.Name || !sameSpec(&c, spec) || c.State == "dead" || c.State == "removing" {
			continue
		}
		checks = append(checks, runtime.DriftCheck{Spec: spec, ID: c.ID})
		keys[c.ID] = string(spec.Kind) + "/" + spec.Name
	}
	if len(checks) == 0 {
		return nil, nil
	}
	found, err := eng.InspectDrift(ctx, checks)
	out := map[string]Drift{}
	for id, fields := range found {
		key, ok := keys[id]
		if !ok {
			continue
		}
		reasons := make([]string, 0, len(fields))
		for _, f := range fields {
			reasons = append(reasons, "drift: "+f.String())
		}
		sort.Strings(reasons)
		out[key] = Drift{Container: id, Reasons: reasons}
	}
	return out, err
}
