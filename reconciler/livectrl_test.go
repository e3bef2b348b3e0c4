package reconciler_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// liveController is a controller of a lab in a real git repository,
// served over HTTP, converging the real engine.
type liveController struct {
	t     *testing.T
	rt    *runtime.Client
	name  string
	image string
	repo  *testenv.Repo
	ctrl  *reconciler.Controller
	logs  *testenv.SyncBuffer
	opts  reconciler.ControllerOptions
	stop  func()
}

// labFiles returns a lab of agents without healthcheck, quick to start.
func labFiles(name, image string, agents ...string) map[string]string {
	files := map[string]string{
		"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {disable: true}\n  update: {min_uptime: 300ms, start_timeout: 10s}\n", name, image),
	}
	for i, a := range agents {
		files["sut/"+a+".conf"] = agentConf(a)
		files["sut/"+a+"_snappy.yaml"] = fmt.Sprintf("device_ip: 10.250.1.%d\n", i+10)
	}
	return files
}

// newLiveController commits files as the lab's first revision and makes a
// controller of it, with docker (the engine itself when nil) and the
// options set by tune. Start runs it.
func newLiveController(t *testing.T, files func(name, image string) map[string]string, docker func(*runtime.Client) reconciler.Docker, tune func(*reconciler.ControllerOptions)) *liveController {
	t.Helper()
	rt := testenv.Docker(t)
	lc := &liveController{t: t, rt: rt, name: testenv.Name(t), image: testenv.StandinImage(t, rt), logs: &testenv.SyncBuffer{}}
	testenv.CleanupLab(t, rt, lc.name)
	gs := testenv.NewGitServer(t, "u", "p")
	lc.repo = gs.NewRepo(t, "lab")
	lc.repo.Commit("lab", files(lc.name, lc.image))
	var d reconciler.Docker = rt
	if docker != nil {
		d = docker(rt)
	}
	opts := reconciler.ControllerOptions{Source: lc.source(), Docker: d, DefaultName: lc.name, MinBackoff: time.Hour, BusyRecheck: time.Hour,
		Apply: reconciler.ApplyOptions{StopTimeout: time.Second}, Logger: slog.New(slog.NewTextHandler(lc.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if tune != nil {
		tune(&opts)
	}
	lc.opts = opts
	lc.ctrl = reconciler.NewController(opts)
	return lc
}

// source opens the lab's repository in a cache of its own.
func (lc *liveController) source() *gitsource.Source {
	lc.t.Helper()
	src, err := gitsource.Open(gitsource.Options{URL: lc.repo.URL, CacheDir: lc.t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		lc.t.Fatal(err)
	}
	return src
}

// restart stops the controller and starts a new one with the same
// options and a new cache of the repository, as a daemon restarted on a
// new machine would, and waits for its first pass.
func (lc *liveController) restart() reconciler.Run {
	lc.t.Helper()
	lc.stop()
	lc.opts.Source = lc.source()
	lc.ctrl = reconciler.NewController(lc.opts)
	return lc.start()
}

// start runs the controller until the test ends, and waits for its first
// pass.
func (lc *liveController) start() reconciler.Run {
	lc.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lc.ctrl.Run(ctx) }()
	var once sync.Once
	lc.stop = func() { once.Do(func() { cancel(); <-done }) }
	lc.t.Cleanup(lc.stop)
	return lc.waitPass(1, "start")
}

// waitPass waits for the n-th pass to end and returns it.
func (lc *liveController) waitPass(n int, why string) reconciler.Run {
	lc.t.Helper()
	testenv.Eventually(lc.t, 90*time.Second, fmt.Sprintf("no pass %d (%s)", n, why), func() bool {
		return len(lc.ctrl.Runs()) >= n && !lc.ctrl.Status().Passing
	})
	return lc.ctrl.Runs()[len(lc.ctrl.Runs())-n]
}

// pass triggers the n-th pass and returns it.
func (lc *liveController) pass(n int, why string) reconciler.Run {
	lc.t.Helper()
	lc.ctrl.Trigger(why)
	return lc.waitPass(n, why)
}

// commit adds a revision that changes files (an empty value removes one).
func (lc *liveController) commit(msg string, files map[string]string) {
	lc.repo.Commit(msg, files)
}

// agents returns the lab's agent containers on the engine, by object.
func (lc *liveController) agents(ctx context.Context) map[string]runtime.ObservedContainer {
	lc.t.Helper()
	obs, err := lc.rt.Observe(ctx, lc.name)
	if err != nil {
		lc.t.Fatal(err)
	}
	out := map[string]runtime.ObservedContainer{}
	for _, c := range obs.Containers {
		out[c.Object] = c
	}
	return out
}

// startedLab starts a controller of a lab of agents (labFiles), with the
// options set by tune, and fails the test unless its first pass is ok.
func startedLab(t *testing.T, tune func(*reconciler.ControllerOptions), agents ...string) *liveController {
	t.Helper()
	lc := newLiveController(t, func(name, image string) map[string]string { return labFiles(name, image, agents...) }, nil, tune)
	if r := lc.start(); r.Result != reconciler.ResultOK {
		t.Fatalf("first pass: %s: %s", r.Result, r.Error)
	}
	return lc
}
