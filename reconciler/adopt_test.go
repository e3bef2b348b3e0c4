package reconciler_test

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

func adoptLab() fstest.MapFS {
	return fstest.MapFS{
		"lab.yaml":            {Data: []byte("name: newlab\nagents:\n  image: {name: agent:1}\nadopt:\n  compose_project: oldstack\n")},
		"docker-compose.yaml": {Data: []byte("services:\n  redis:\n    image: redis:7\n    volumes: [data:/data]\nvolumes:\n  data: {}\n")},
		"sut/alpha.conf":      {Data: []byte(agentConf("alpha"))},
		"sut/beta.conf":       {Data: []byte(agentConf("beta"))},
	}
}

// What the old stack left on the host: its agents (made through the API,
// no labels), its compose service and its data volume.
func oldStack() *runtime.Foreign {
	return &runtime.Foreign{
		Containers: []runtime.ObservedContainer{
			{ID: "c-alpha", Name: "alpha", Image: "old-agent", State: "running"},
			{ID: "c-redis", Name: "oldstack_redis_1", Image: "redis:7", State: "running", ComposeProject: "oldstack", ComposeService: "redis"},
		},
		Volumes: []string{"oldstack_data"},
	}
}

func TestAdoptTakesOverTheOldStack(t *testing.T) {
	d := compile(t, adoptLab())
	if d.Volumes[0].Name != "oldstack_data" {
		t.Fatalf("volume name %s, want compose's oldstack_data", d.Volumes[0].Name)
	}
	obs := &runtime.Observed{Images: map[string]string{"agent:1": "sha256:a", "redis:7": "sha256:r"}}

	// Without --adopt: what is in the way blocks its objects, and says how
	// to take it over; beta has nothing in its way.
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: oldStack()})
	got := actionsOf(p)
	if strings.Join(got, ",") != "create-network default,create beta" {
		t.Errorf("plan without --adopt = %v", got)
	}
	var blocked []string
	for _, b := range p.Blocked {
		blocked = append(blocked, b.Kind+" "+b.Object+" by "+b.By)
		if !strings.Contains(b.Reason, "--adopt") {
			t.Errorf("%s: %s does not name --adopt", b.Object, b.Reason)
		}
	}
	if strings.Join(blocked, ",") != "volume data by oldstack_data,service redis by oldstack_data,agent alpha by alpha" {
		t.Errorf("blocked = %v", blocked)
	}

	// With --adopt: the volume is reused, the containers replaced.
	p = reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: oldStack(), Adopt: true})
	got = actionsOf(p)
	if strings.Join(got, ",") != "create-network default,adopt-volume data,adopt redis,adopt alpha,create beta" {
		t.Errorf("plan with --adopt = %v", got)
	}
	for _, a := range p.Actions {
		if a.Kind == reconciler.Adopt && (a.Old == nil || !strings.Contains(a.Reasons[0], "was not made by labsync")) {
			t.Errorf("adopt %s: old %v, reasons %v", a.Object, a.Old, a.Reasons)
		}
	}
	if len(p.Blocked) != 0 {
		t.Errorf("blocked with --adopt: %v", p.Blocked)
	}
}

// The lookup costs nothing when a plan creates nothing, and once the lab's
// containers mount the adopted volume, it is theirs.
func TestForeignLookupOnlyWhenCreating(t *testing.T) {
	d := compile(t, adoptLab())
	calls := 0
	lister := func(ctx context.Context, o runtime.ForeignOptions) (*runtime.Foreign, error) {
		calls++
		return &runtime.Foreign{}, nil
	}
	obs := observedFrom(d)
	for i := range obs.Containers {
		if obs.Containers[i].Object == "redis" {
			obs.Containers[i].Volumes = []string{"oldstack_data"}
		}
	}
	obs.Networks = nil
	obs.Networks = append(obs.Networks, runtime.ObservedNetwork{Name: d.Networks[0].Name, Hash: d.Networks[0].Hash})
	p, err := reconciler.PlanHost(context.Background(), d, obs, reconciler.PlanOptions{}, lister)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Empty() || calls != 0 {
		t.Errorf("in-sync plan: %v, %d lookups", actionsOf(p), calls)
	}
	// A new agent: one lookup.
	d2 := compile(t, func() fstest.MapFS {
		f := adoptLab()
		f["sut/gamma.conf"] = &fstest.MapFile{Data: []byte(agentConf("gamma"))}
		return f
	}())
	if _, err := reconciler.PlanHost(context.Background(), d2, obs, reconciler.PlanOptions{}, lister); err != nil || calls != 1 {
		t.Errorf("plan with a create: %v, %d lookups", err, calls)
	}
}

// The old stack's network (with its fixed subnet) is reused as it is:
// blocked without --adopt, with the containers that join it; taken over
// with it.
func TestAdoptReusesTheOldNetwork(t *testing.T) {
	d := compile(t, adoptLab())
	obs := &runtime.Observed{Images: map[string]string{"agent:1": "sha256:a", "redis:7": "sha256:r"}}
	old := &runtime.Foreign{Networks: []string{"oldstack_default"}}
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: old})
	if got := strings.Join(actionsOf(p), ","); got != "create-volume data" {
		t.Errorf("plan without --adopt = %v", got)
	}
	if len(p.Blocked) != 4 { // the network, redis, alpha, beta
		t.Errorf("blocked = %+v", p.Blocked)
	}
	p = reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: old, Adopt: true})
	if got := strings.Join(actionsOf(p), ","); got != "adopt-network default,create-volume data,create redis,create alpha,create beta" {
		t.Errorf("plan with --adopt = %v", got)
	}
	// Once the lab's containers are on it, it is the lab's.
	obs = observedFrom(d)
	for i := range obs.Containers {
		obs.Containers[i].Networks = []string{"oldstack_default"}
	}
	obs.Networks = nil
	obs.Volumes = append(obs.Volumes, runtime.ObservedVolume{Name: "oldstack_data"})
	if p := reconciler.Plan(d, obs, reconciler.PlanOptions{}); !p.Empty() || len(p.Blocked) > 0 {
		t.Errorf("after the takeover: %v, blocked %v", actionsOf(p), p.Blocked)
	}
}

// A takeover interrupted after the old container was set aside is finished
// by the next adopting pass, as an interrupted recreate is: the set-aside
// container carries no labels, and only the lookup finds it.
func TestInterruptedTakeoverIsFinished(t *testing.T) {
	d := compile(t, adoptLab())
	aside := runtime.ObservedContainer{ID: "c-old", Name: "alpha" + runtime.AsideSuffix, Image: "old-agent", State: "exited"}
	foreign := &runtime.Foreign{Containers: []runtime.ObservedContainer{aside}}

	// Crashed before the new container was made.
	obs := observedFrom(d)
	var rest []runtime.ObservedContainer
	for _, c := range obs.Containers {
		if c.Object != "alpha" {
			rest = append(rest, c)
		}
	}
	obs.Containers = rest
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: foreign, Adopt: true})
	if got := strings.Join(actionsOf(p), ","); got != "recreate alpha" || p.Actions[0].Old.ID != "c-old" {
		t.Errorf("set aside, no new container: %v", got)
	}

	// Crashed after the new container was made: check it, then remove the
	// old one.
	obs = observedFrom(d)
	p = reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: foreign, Adopt: true})
	if got := strings.Join(actionsOf(p), ","); got != "finish-recreate alpha" || p.Actions[0].Old.ID != "c-old" {
		t.Errorf("set aside beside the new container: %v", got)
	}
}

// An old network whose subnet is not the lab's is not taken over: the lab's
// static addresses would not fit it.
func TestAdoptRefusesANetworkOfAnotherSubnet(t *testing.T) {
	fsys := adoptLab()
	fsys["docker-compose.yaml"] = &fstest.MapFile{Data: []byte("services:\n  redis:\n    image: redis:7\n    networks: {lab: {ipv4_address: 10.9.0.5}}\n" +
		"networks:\n  lab:\n    ipam: {config: [{subnet: 10.9.0.0/24}, {subnet: 'fd00:ab::/64'}]}\n")}
	d := compile(t, fsys)
	obs := &runtime.Observed{Images: map[string]string{"agent:1": "sha256:a", "redis:7": "sha256:r"}}
	for _, tc := range []struct {
		have  []string
		adopt bool
	}{
		{[]string{"10.9.0.0/24", "fd00:ab::/64"}, true},
		{[]string{"fd00:AB:0::/64", "10.9.0.0/24"}, true},                    // as text, not as written
		{[]string{"10.9.0.0/24", "fd00:ab::/64", "", "172.30.0.0/16"}, true}, // more pools than declared
		{[]string{"10.8.0.0/24", "fd00:ab::/64"}, false},
		{[]string{"10.9.0.0/24"}, false},
	} {
		old := &runtime.Foreign{Networks: []string{"oldstack_lab"}, NetworkSubnets: map[string][]string{"oldstack_lab": tc.have}}
		p := reconciler.Plan(d, obs, reconciler.PlanOptions{Foreign: old, Adopt: true})
		adopted := strings.Contains(strings.Join(actionsOf(p), ","), "adopt-network lab")
		if adopted != tc.adopt {
			t.Errorf("old subnets %v: adopted %v; actions %v, blocked %+v", tc.have, adopted, actionsOf(p), p.Blocked)
		}
		if adopted {
			continue
		}
		// The network and the service that joins it both say why, and
		// never "apply with --adopt", which this plan already has.
		if len(p.Blocked) < 2 {
			t.Fatalf("old subnets %v: blocked %+v, want the network and its containers", tc.have, p.Blocked)
		}
		for _, b := range p.Blocked {
			if !strings.Contains(b.Reason, "subnet") || strings.Contains(b.Reason, "apply with --adopt") {
				t.Errorf("old subnets %v: blocked %s %s: %q", tc.have, b.Kind, b.Object, b.Reason)
			}
		}
	}
}
