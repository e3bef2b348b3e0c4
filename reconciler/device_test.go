package reconciler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/reconciler"
)

// Devices of newLiveLab's agents, in the order they are given.
const (
	devX = "10.250.0.10"
	devY = "10.250.0.11"
)

func statusesOf(r *reconciler.Report) map[string]reconciler.Result {
	out := map[string]reconciler.Result{}
	for _, res := range r.Results {
		out[string(res.Action.Kind)+" "+res.Action.Object] = res
	}
	return out
}

// One commit moves beta from X to Y and adds alpha on X. alpha sorts
// first and runs first (parallelism 1), but waits until beta's old
// container is stopped: both converge in one apply, and X never has two
// agents.
func TestDeviceMoveWaitsForTheOldAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "beta")
	l.applyOK(ctx)
	watch := testenv.WatchDevices(t, l.rt, l.name)

	l.write("sut/beta_snappy.yaml", "device_ip: "+devY+"\n")
	l.write("sut/alpha.conf", agentConf("alpha"))
	l.write("sut/alpha_snappy.yaml", "device_ip: "+devX+"\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{Parallelism: 1})
	got := statusesOf(r)
	if got["create alpha"].Status != reconciler.StatusOK || got["recreate beta"].Status != reconciler.StatusOK {
		t.Fatalf("results %+v, want alpha created and beta recreated", r.Results)
	}
	watch.Sync(t, l.rt, l.name, l.image)
	if v := watch.Violations(); len(v) > 0 {
		t.Errorf("two containers ran at once: %v", v)
	}
}

// beta's move to Y is deferred (its agent runs a job): alpha, new on X,
// waits with that reason, and starts once beta has moved.
func TestDeviceOfABusyAgentIsNotTaken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "beta")
	l.write("sut/beta.lab.yaml", agentCmd+"env: {STANDIN_JOB_EVERY: \"2\", STANDIN_JOB_DURATION: 4s}\n")
	l.write("sut/beta.conf", strings.Replace(agentConf("beta"), "polling_interval: 30", "polling_interval: 1", 1))
	l.applyOK(ctx)
	old := l.containers(ctx)[l.name+"-beta"]
	watch := testenv.WatchDevices(t, l.rt, l.name)
	testenv.Eventually(t, 10*time.Second, "beta never busy", func() bool {
		a, _ := l.rt.AgentActivity(ctx, old.ID)
		return a.Busy
	})

	l.write("sut/beta_snappy.yaml", "device_ip: "+devY+"\n")
	l.write("sut/alpha.conf", agentConf("alpha"))
	l.write("sut/alpha_snappy.yaml", "device_ip: "+devX+"\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	got := statusesOf(r)
	if got["recreate beta"].Status != reconciler.StatusDeferred || got["create alpha"].Status != reconciler.StatusDeferred ||
		!strings.Contains(got["create alpha"].Error, "device "+devX) || got["create alpha"].WaitsFor != reconciler.WaitDevice {
		t.Fatalf("results %+v, want beta deferred for its job and alpha waiting for device %s", r.Results, devX)
	}
	if _, ok := l.containers(ctx)[l.name+"-alpha"]; ok {
		t.Fatal("alpha was created while beta's container still drove its device")
	}
	testenv.Eventually(t, 30*time.Second, "the move never happened after the job", func() bool {
		a, _ := l.rt.AgentActivity(ctx, old.ID)
		if a.Busy {
			return false
		}
		_, r := l.apply(ctx, reconciler.ApplyOptions{})
		return r.Failed() == 0 && len(r.Deferred()) == 0
	})
	watch.Sync(t, l.rt, l.name, l.image)
	if v := watch.Violations(); len(v) > 0 {
		t.Errorf("two containers ran at once: %v", v)
	}
}

// beta's move cannot be made (its new image is not on the host), so its
// old container keeps X, and alpha, new on X, waits.
func TestDeviceStaysWithAnAgentWhoseRecreateFailed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "beta")
	l.applyOK(ctx)
	watch := testenv.WatchDevices(t, l.rt, l.name)

	l.write("sut/beta_snappy.yaml", "device_ip: "+devY+"\n")
	l.write("sut/beta.lab.yaml", "image: labsync-test/not-on-this-host:1\n")
	l.write("sut/alpha.conf", agentConf("alpha"))
	l.write("sut/alpha_snappy.yaml", "device_ip: "+devX+"\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	got := statusesOf(r)
	if got["recreate beta"].Status != reconciler.StatusFailed || got["create alpha"].Status != reconciler.StatusDeferred ||
		!strings.Contains(got["create alpha"].Error, l.name+"-beta") {
		t.Fatalf("results %+v, want beta failed and alpha waiting for beta's container", r.Results)
	}
	if c := l.containers(ctx)[l.name+"-beta"]; c.State != "running" {
		t.Errorf("beta's old container is %s, want it running on", c.State)
	}
	watch.Sync(t, l.rt, l.name, l.image)
	if v := watch.Violations(); len(v) > 0 {
		t.Errorf("two containers ran at once: %v", v)
	}
}

// alpha and beta swap devices in one commit: each waits for the other's
// old container, so one is stopped first; both converge in one apply and
// no device has two agents.
func TestDeviceSwap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta")
	l.applyOK(ctx)
	watch := testenv.WatchDevices(t, l.rt, l.name)

	l.write("sut/alpha_snappy.yaml", "device_ip: "+devY+"\n")
	l.write("sut/beta_snappy.yaml", "device_ip: "+devX+"\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{Parallelism: 1})
	got := statusesOf(r)
	if got["recreate alpha"].Status != reconciler.StatusOK || got["recreate beta"].Status != reconciler.StatusOK {
		t.Fatalf("results %+v, want both recreated", r.Results)
	}
	if p := l.plan(ctx); !p.Empty() {
		t.Errorf("a second plan has actions: %v", actionsOf(p))
	}
	watch.Sync(t, l.rt, l.name, l.image)
	if v := watch.Violations(); len(v) > 0 {
		t.Errorf("two containers ran at once: %v", v)
	}
}
