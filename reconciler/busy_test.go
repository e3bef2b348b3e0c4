package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/testflinger"
)

// A change deferred for a busy agent, then reverted: its busy record goes
// with it. A later change to the same agent waits for the job as a new
// one, instead of finding the busy timeout long run out and recreating
// the agent mid-job.
func TestRevertedChangeForgetsItsBusyRecord(t *testing.T) {
	t.Parallel()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	var busy atomic.Bool
	tf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := testflinger.AgentState{State: "waiting"}
		if busy.Load() {
			st = testflinger.AgentState{State: "test", JobID: "0b3a5c3e-1c1c-4c1c-9c1c-1c1c1c1c1c1c"}
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer tf.Close()

	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	// No labsync-agent, so no heartbeat: the Testflinger server says who
	// is busy. The busy timeout is over at once.
	repo.Commit("lab", map[string]string{
		"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  command: [testflinger-agent, -c, '{conf}']\n"+
			"  healthcheck: {disable: true}\n  update: {min_uptime: 200ms, busy_timeout: 1ms, busy_policy: recreate}\ntestflinger:\n  server: %[3]s\n", name, image, tf.URL),
		"sut/alpha.conf": agentConf("alpha"),
	})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, MinBackoff: time.Hour, BusyRecheck: time.Hour,
		Apply: reconciler.ApplyOptions{StopTimeout: time.Second},
		AgentIdle: func(ctx context.Context, d *lab.Desired, agent string) (bool, error) {
			st, err := testflinger.NewClient(d.TestflingerServer).AgentState(ctx, agent)
			return st.Idle(), err
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	pass := func(n int, why string) reconciler.Run {
		t.Helper()
		ctrl.Trigger(why)
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("no pass %d (%s)", n, why), func() bool { return len(ctrl.Runs()) >= n && !ctrl.Status().Passing })
		return ctrl.Runs()[0]
	}
	testenv.Eventually(t, 60*time.Second, "no first pass", func() bool { return len(ctrl.Runs()) >= 1 && !ctrl.Status().Passing })
	obs, _ := rt.Observe(ctx, name)
	if len(obs.Containers) != 1 {
		t.Fatalf("first pass: %+v", ctrl.Runs()[0])
	}
	id := obs.Containers[0].ID
	recreated := func() bool {
		obs, _ := rt.Observe(ctx, name)
		return len(obs.Containers) != 1 || obs.Containers[0].ID != id
	}

	busy.Store(true)
	repo.Commit("change alpha", map[string]string{"sut/alpha.conf": strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 31", 1)})
	if r := pass(2, "change"); len(r.Results) != 1 || r.Results[0].Status != reconciler.StatusDeferred || recreated() {
		t.Fatalf("change to the busy agent: %+v", r.Results)
	}
	repo.Commit("revert", map[string]string{"sut/alpha.conf": agentConf("alpha")})
	if r := pass(3, "revert"); r.Plan == nil || !r.Plan.Empty() {
		t.Fatalf("after the revert: %+v", r.Plan)
	}
	repo.Commit("another change", map[string]string{"sut/alpha.conf": strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 45", 1)})
	r := pass(4, "another change")
	if len(r.Results) != 1 || r.Results[0].Status != reconciler.StatusDeferred || recreated() {
		t.Fatalf("a new change to the busy agent was not deferred: %+v", r.Results)
	}
	// Its own wait runs out (1ms), and the policy recreates it then.
	if r := pass(5, "again"); len(r.Results) != 1 || r.Results[0].Status != reconciler.StatusOK || !recreated() {
		t.Fatalf("the busy timeout of the new change did not recreate it: %+v", r.Results)
	}
}
