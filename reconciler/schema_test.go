package reconciler_test

import (
	"testing"

	"github.com/labsync/labsync/reconciler"
)

// A container made under schema 1 (files hashed by content) is in sync
// when its hash is the spec's legacy hash; under schema 2 that hash is a
// change.
func TestSchema1ContainersAreInSync(t *testing.T) {
	d := compile(t, withDevices(planLab("alpha", "beta")))
	for _, tc := range []struct {
		schema string
		want   int
	}{{"1", 0}, {"2", 2}} {
		obs := observedFrom(d)
		for i := range obs.Containers {
			c := &obs.Containers[i]
			for _, spec := range d.Containers {
				if spec.Name == c.Object && len(spec.Files) > 0 {
					c.Hash, c.Schema = spec.LegacyHash(), tc.schema
				}
			}
		}
		p := reconciler.Plan(d, obs, reconciler.PlanOptions{})
		if len(p.Actions) != tc.want {
			t.Errorf("schema %s: %d actions, want %d: %+v", tc.schema, len(p.Actions), tc.want, p.Actions)
		}
	}
}
