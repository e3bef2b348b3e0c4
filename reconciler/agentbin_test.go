package reconciler_test

import (
	"strings"
	"testing"

	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// The volume that gives agents labsync-agent is labsync's own: the plan
// never calls it an undeclared volume. A volume of the lab's that is no
// longer declared is still reported.
func TestPlanIgnoresAgentBinaryVolume(t *testing.T) {
	d := compile(t, planLab("alpha"))
	obs := observedFrom(d)
	obs.Volumes = append(obs.Volumes,
		runtime.ObservedVolume{Name: "plan_labsync-agent-0123456789ab", AgentBinary: true},
		runtime.ObservedVolume{Name: "plan_old", Object: "old"})
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{})
	if !p.Empty() {
		t.Errorf("actions %+v, want none", p.Actions)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "plan_old") {
		t.Errorf("warnings %q, want one, about plan_old", p.Warnings)
	}
}
