package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
	"github.com/labsync/labsync/testflinger"
)

// A clean slate recreates the idle agents and leaves the busy one alone,
// as the Testflinger server reports them.
func TestCleanSlateRecreatesOnlyIdleAgents(t *testing.T) {
	t.Parallel()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)

	tf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agent := strings.TrimPrefix(r.URL.Path, "/v1/agents/data/")
		st := testflinger.AgentState{State: "waiting"}
		if agent == "busy" {
			st = testflinger.AgentState{State: "test", JobID: "0b3a5c3e-1c1c-4c1c-9c1c-1c1c1c1c1c1c"}
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer tf.Close()

	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("lab", map[string]string{
		"lab.yaml":      fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {test: [CMD, labsync-agent, healthcheck], interval: 1s}\n  update: {min_uptime: 200ms}\ntestflinger:\n  server: %[3]s\n", name, image, tf.URL),
		"sut/idle.conf": agentConf("idle"),
		"sut/busy.conf": agentConf("busy"),
	})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, MinBackoff: 200 * time.Millisecond,
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

	waitRun := func(n int) reconciler.Run {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("no run %d", n), func() bool { return len(ctrl.Runs()) >= n && !ctrl.Status().Passing })
		return ctrl.Runs()[0]
	}
	if r := waitRun(1); r.Result != reconciler.ResultOK {
		t.Fatalf("first pass: %s %s", r.Result, r.Error)
	}
	ctrl.TriggerCleanSlate("test: clean slate")
	r := waitRun(2)
	var got []string
	for _, a := range r.Plan.Actions {
		got = append(got, string(a.Kind)+" "+a.Object+": "+strings.Join(a.Reasons, "; "))
	}
	if len(got) != 1 || got[0] != "recreate idle: clean slate: scheduled recreate of an idle agent" {
		t.Fatalf("clean-slate plan = %v", got)
	}
	if r.Result != reconciler.ResultOK {
		t.Errorf("clean slate: %s %s", r.Result, r.Error)
	}
	// An ordinary pass afterwards recreates nothing.
	ctrl.Trigger("test: again")
	if r := waitRun(3); r.Plan == nil || !r.Plan.Empty() {
		t.Errorf("pass after the clean slate planned %v", r.Plan)
	}
}

// An agent whose healthcheck keeps failing is restarted by auto-heal,
// within its budget; each restart and the refusal past it are events.
func TestAutoHealRestartsUnhealthyAgentWithinBudget(t *testing.T) {
	t.Parallel()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("lab", map[string]string{
		"lab.yaml":           fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {test: [CMD, labsync-agent, healthcheck], interval: 1s, retries: 1}\n  update: {min_uptime: 200ms}\n", name, image),
		"sut/flaky.conf":     agentConf("flaky"),
		"sut/flaky.lab.yaml": agentCmd + "env: {STANDIN_EXIT_AFTER: 3s}\n",
	})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []reconciler.Event
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, MinBackoff: time.Hour,
		Apply:    reconciler.ApplyOptions{StopTimeout: time.Second},
		AutoHeal: reconciler.AutoHeal{After: 1, Max: 1, Window: time.Hour},
		Events:   func(ctx context.Context, lab string) <-chan runtime.Event { return rt.Events(ctx, lab, nil) },
		OnEvent: func(e reconciler.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	count := func(substr string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, e := range events {
			if e.Type == "auto-heal" && strings.HasPrefix(e.Message, substr) {
				n++
			}
		}
		return n
	}
	defer func() {
		if t.Failed() {
			mu.Lock()
			for _, e := range events {
				t.Logf("event: %+v", e)
			}
			mu.Unlock()
		}
	}()
	testenv.Eventually(t, 90*time.Second, "no auto-heal restart and refusal", func() bool {
		return count("restarted ") == 1 && count(name+"-flaky is unhealthy") >= 1
	})
}
