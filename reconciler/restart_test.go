package reconciler_test

import (
	"context"
	"encoding/json"
	"errors"
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

// A restart on request never ends a running job unless forced: the job is
// read from the agent's labsync-agent heartbeat, else asked of the
// Testflinger server.
func TestRestartAgentRefusesBusyAgents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)

	var plainBusy atomic.Bool
	plainBusy.Store(true)
	tf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := testflinger.AgentState{State: "waiting"}
		if strings.TrimPrefix(r.URL.Path, "/v1/agents/data/") == "plain" && plainBusy.Load() {
			st = testflinger.AgentState{State: "test", JobID: "0b3a5c3e-1c1c-4c1c-9c1c-1c1c1c1c1c1c"}
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer tf.Close()

	// "busy" runs under labsync-agent and takes an hour-long job at once;
	// "plain" runs without labsync-agent, so only the server knows.
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("lab", map[string]string{
		"lab.yaml":          fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  command: [testflinger-agent, -c, '{conf}']\n  healthcheck: {disable: true}\n  update: {min_uptime: 200ms}\ntestflinger:\n  server: %[3]s\n", name, image, tf.URL),
		"sut/busy.conf":     strings.Replace(agentConf("busy"), "polling_interval: 30", "polling_interval: 1", 1),
		"sut/busy.lab.yaml": agentCmd + "env: {STANDIN_JOB_EVERY: \"1\", STANDIN_JOB_DURATION: 1h}\n",
		"sut/plain.conf":    agentConf("plain"),
	})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, MinBackoff: time.Hour,
		Apply: reconciler.ApplyOptions{StopTimeout: time.Second},
		AgentIdle: func(ctx context.Context, d *lab.Desired, agent string) (bool, error) {
			st, err := testflinger.NewClient(d.TestflingerServer).AgentState(ctx, agent)
			return st.Idle(), err
		},
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 60*time.Second, "first pass not done", func() bool { return len(ctrl.Runs()) >= 1 && !ctrl.Status().Passing })
	if r := ctrl.Runs()[0]; r.Result != reconciler.ResultOK {
		t.Fatalf("first pass: %s %s", r.Result, r.Error)
	}

	container := func(agent string) (id, started string) {
		t.Helper()
		obs, err := rt.Observe(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range obs.Containers {
			if o.Object == agent && !o.Aside {
				info, err := rt.API().ContainerInspect(ctx, o.ID)
				if err != nil {
					t.Fatal(err)
				}
				return o.ID, info.State.StartedAt
			}
		}
		t.Fatalf("no container for %s", agent)
		return "", ""
	}
	busyID, busyStarted := container("busy")
	testenv.Eventually(t, 30*time.Second, "busy agent never took its job", func() bool {
		a, _ := rt.AgentActivity(ctx, busyID)
		return a.Busy && a.JobID != ""
	})
	activity, _ := rt.AgentActivity(ctx, busyID)
	_, plainStarted := container("plain")

	// Refused: the heartbeat says which job runs.
	err = ctrl.RestartAgent(ctx, "busy", false)
	var be *reconciler.AgentBusyError
	if !errors.As(err, &be) || be.JobID != activity.JobID || !strings.Contains(err.Error(), activity.JobID) {
		t.Fatalf("restart of the busy agent: err = %v, want an AgentBusyError naming job %s", err, activity.JobID)
	}
	// Refused: the server says a job runs.
	err = ctrl.RestartAgent(ctx, "plain", false)
	if !errors.As(err, &be) || be.Agent != "plain" || !strings.Contains(err.Error(), "Testflinger server") {
		t.Fatalf("restart of an agent the server says is busy: err = %v", err)
	}
	if _, s := container("busy"); s != busyStarted {
		t.Error("the busy agent was restarted")
	}
	if _, s := container("plain"); s != plainStarted {
		t.Error("the agent the server says is busy was restarted")
	}

	// Once idle, plain restarts; forced, busy restarts too.
	plainBusy.Store(false)
	if err := ctrl.RestartAgent(ctx, "plain", false); err != nil {
		t.Fatalf("restart of an idle agent: %v", err)
	}
	if err := ctrl.RestartAgent(ctx, "busy", true); err != nil {
		t.Fatalf("forced restart of the busy agent: %v", err)
	}
	if _, s := container("plain"); s == plainStarted {
		t.Error("the idle agent was not restarted")
	}
	if _, s := container("busy"); s == busyStarted {
		t.Error("the forced restart did not restart the busy agent")
	}
	if err := ctrl.RestartAgent(ctx, "nobody", true); err == nil || errors.As(err, &be) {
		t.Errorf("restart of an unknown agent: %v", err)
	}
}
