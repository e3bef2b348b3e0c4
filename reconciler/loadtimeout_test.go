package reconciler_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/reconciler"
)

// A revision that takes longer than the load timeout is reported like an
// invalid one and not loaded again at every pass: its inputs did not change.
func TestLoadTimeoutIsRemembered(t *testing.T) {
	rt := testenv.Docker(t)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	head := repo.Commit("lab", map[string]string{"lab.yaml": fmt.Sprintf("name: %s\n", name), "sut/a.conf": agentConf("a")})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		LoadTimeout: time.Nanosecond, // every load is too slow
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 30*time.Second, "no pass", func() bool { return len(ctrl.Runs()) >= 1 && !ctrl.Status().Passing })
	r := ctrl.Runs()[0]
	if r.Result != reconciler.ResultInvalid || ctrl.Status().Invalid != head {
		t.Fatalf("first pass: %s %q; status invalid %q, want %s", r.Result, r.Error, ctrl.Status().Invalid, head)
	}
	found := false
	for _, d := range r.Diagnostics {
		found = found || strings.Contains(d.Message, "took longer than")
	}
	if !found {
		t.Errorf("diagnostics %v do not say the load took too long", r.Diagnostics)
	}
	// No retry loop: a trigger makes one more pass, which does not load.
	ctrl.Trigger("test")
	testenv.Eventually(t, 30*time.Second, "no second pass", func() bool { return len(ctrl.Runs()) >= 2 && !ctrl.Status().Passing })
	if r := ctrl.Runs()[0]; r.Result != reconciler.ResultInvalid || !strings.Contains(r.Error, "not retried") {
		t.Errorf("second pass: %s %q", r.Result, r.Error)
	}
}
