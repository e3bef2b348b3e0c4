package reconciler_test

import (
	"bytes"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// A held agent is neither created, changed nor removed: its container, if
// any, is left as it runs; an agent that would take a device a held
// agent's container drives is held too; the prune guard counts held
// agents as present.
func TestHeldAgentsAreLeftAlone(t *testing.T) {
	fsys := withDevices(planLab("alpha", "beta", "gamma", "delta"))
	before := compile(t, fsys)
	obs := observedFrom(before)

	// Next revision: alpha's conf breaks, beta and gamma claim one device,
	// and a new agent epsilon takes delta's old device while delta's
	// connector file breaks (so its device is unknown at this revision).
	next := withDevices(planLab("alpha", "beta", "gamma", "delta"))
	next["sut/alpha.conf"] = &fstest.MapFile{Data: []byte(strings.Replace(agentConf("alpha"), "job_queues", "job_queus", 1))}
	next["sut/gamma_snappy.yaml"] = &fstest.MapFile{Data: []byte("device_ip: 10.0.0.2\n")}
	next["sut/delta_snappy.yaml"] = &fstest.MapFile{Data: []byte("device_ip: [")}
	next["sut/epsilon.conf"] = &fstest.MapFile{Data: []byte(agentConf("epsilon"))}
	next["sut/epsilon_snappy.yaml"] = &fstest.MapFile{Data: []byte("device_ip: 10.0.0.4\n")}
	l, err := lab.Load(next, lab.LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	d := lab.Compile(l, lab.CompileOptions{Revision: "def456"})
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{})

	for _, a := range p.Actions {
		if a.ObjectKind == string(lab.KindAgent) {
			t.Errorf("action on agent %s: %s %v", a.Object, a.Kind, a.Reasons)
		}
	}
	var held []string
	for _, h := range p.Held {
		held = append(held, h.Name)
		if len(h.Reasons) == 0 {
			t.Errorf("%s held without a reason", h.Name)
		}
	}
	if strings.Join(held, ",") != "alpha,beta,delta,epsilon,gamma" {
		t.Fatalf("held %v", held)
	}
	if p.PruneBlocked {
		t.Error("held agents counted as removals by the prune guard")
	}
	var out bytes.Buffer
	if err := p.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Held", "sut/alpha.conf:", "epsilon", "device 10.0.0.4"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan table lacks %q:\n%s", want, out.String())
		}
	}
}
