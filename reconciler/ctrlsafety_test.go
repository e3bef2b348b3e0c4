package reconciler_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// holdingDocker holds one reading of the host, once armed, until
// released: a refresh that reads the host before a pass and ends after it.
type holdingDocker struct {
	*runtime.Client
	armed   atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (h *holdingDocker) Observe(ctx context.Context, labName string) (*runtime.Observed, error) {
	obs, err := h.Client.Observe(ctx, labName)
	if h.armed.CompareAndSwap(true, false) {
		close(h.held)
		<-h.release
	}
	return obs, err
}

// A refresh of the observed state that read the host before a pass, and
// ends after it, never replaces the pass's newer reading.
func TestRefreshNeverShowsAnOlderReading(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := &holdingDocker{held: make(chan struct{}), release: make(chan struct{})}
	lc := newLiveController(t, func(name, image string) map[string]string { return labFiles(name, image, "alpha") },
		func(rt *runtime.Client) reconciler.Docker { h.Client = rt; return h }, nil)
	if r := lc.start(); r.Result != reconciler.ResultOK {
		t.Fatalf("first pass: %s: %s", r.Result, r.Error)
	}
	h.armed.Store(true)
	lc.ctrl.Refresh()
	<-h.held // the refresh has read the host: alpha alone

	files := labFiles(lc.name, lc.image, "alpha", "beta")
	lc.commit("add beta", map[string]string{"sut/beta.conf": files["sut/beta.conf"], "sut/beta_snappy.yaml": files["sut/beta_snappy.yaml"]})
	if r := lc.pass(2, "add beta"); r.Result != reconciler.ResultOK {
		t.Fatalf("second pass: %s: %s", r.Result, r.Error)
	}
	if n := len(lc.ctrl.Status().Observed.Containers); n != 2 {
		t.Fatalf("after the pass the status shows %d containers, want 2", n)
	}
	before := strings.Count(lc.logs.String(), `msg="observed state`)
	close(h.release)
	testenv.Eventually(t, 10*time.Second, "the held refresh never ended", func() bool {
		return strings.Count(lc.logs.String(), `msg="observed state`) > before
	})
	if n := len(lc.ctrl.Status().Observed.Containers); n != 2 {
		t.Errorf("the late refresh replaced the pass's reading: the status shows %d containers, want 2 (alpha and beta)", n)
	}
	_ = ctx
}

// panickyDocker panics once in Observe and once in CreateContainer.
type panickyDocker struct {
	*runtime.Client
	observe, create atomic.Bool
}

func (p *panickyDocker) Observe(ctx context.Context, labName string) (*runtime.Observed, error) {
	if p.observe.CompareAndSwap(true, false) {
		panic("observe exploded")
	}
	return p.Client.Observe(ctx, labName)
}

func (p *panickyDocker) CreateContainer(ctx context.Context, spec *lab.ContainerSpec, opts runtime.CreateOptions) (string, error) {
	if p.create.CompareAndSwap(true, false) {
		panic("create exploded")
	}
	return p.Client.CreateContainer(ctx, spec, opts)
}

// A panic in a pass, in its own goroutine or in an action's, ends that
// pass with an error that says so; the daemon goes on, and the next pass
// converges.
func TestPanicInAPassIsReported(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := &panickyDocker{}
	p.observe.Store(true)
	lc := newLiveController(t, func(name, image string) map[string]string { return labFiles(name, image, "alpha") },
		func(rt *runtime.Client) reconciler.Docker { p.Client = rt; return p }, nil)
	r := lc.start()
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "internal error") || !strings.Contains(r.Error, "observe exploded") {
		t.Fatalf("pass that panicked: %s: %q, want an error naming the panic", r.Result, r.Error)
	}
	p.create.Store(true)
	r = lc.pass(2, "again")
	if res := resultOf(r, "alpha"); res.Status != reconciler.StatusFailed || !strings.Contains(res.Error, "create exploded") {
		t.Fatalf("action that panicked: %+v, want it failed with the panic", r.Results)
	}
	r = lc.pass(3, "once more")
	if r.Result != reconciler.ResultOK {
		t.Fatalf("third pass: %s: %s", r.Result, r.Error)
	}
	if _, ok := lc.agents(ctx)["alpha"]; !ok {
		t.Fatal("alpha was never created")
	}
}

// resultOf returns the result of the action on object in a pass.
func resultOf(r reconciler.Run, object string) reconciler.Result {
	for _, res := range r.Results {
		if res.Action.Object == object {
			return res
		}
	}
	return reconciler.Result{}
}

// A recreate whose new container fails is rolled back, and not tried
// again while its inputs stay the same: polls leave the old agent running.
// A sync asked by an operator tries it again; a new commit does too.
func TestFailedRecreateIsNotRetriedUntilItsInputsChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := startedLab(t, nil, "alpha")
	old := lc.agents(ctx)["alpha"]
	badAgent := "command: [testflinger-agent, -c, '{conf}']\nenv: {STANDIN_EXIT_AFTER: 50ms}\n"
	lc.commit("alpha exits at once", map[string]string{"sut/alpha.lab.yaml": badAgent})
	if res := resultOf(lc.pass(2, "bad change"), "alpha"); res.Status != reconciler.StatusRolledBack {
		t.Fatalf("bad change: %+v, want rolled back", res)
	}
	for n := 3; n <= 4; n++ {
		r := lc.pass(n, "poll")
		if res := resultOf(r, "alpha"); res.Status != "" {
			t.Fatalf("pass %d tried the failed recreate again: %+v", n, res)
		}
		if !strings.Contains(strings.Join(r.Plan.Warnings, "\n"), "recreate alpha failed 1 time(s)") {
			t.Errorf("pass %d does not say why alpha is not recreated: %q", n, r.Plan.Warnings)
		}
		if got := lc.agents(ctx)["alpha"]; got.ID != old.ID || got.State != "running" {
			t.Fatalf("pass %d: alpha is %s %s, want the old container %s running", n, got.ID, got.State, old.ID)
		}
	}
	lc.ctrl.Sync("api: sync")
	if res := resultOf(lc.waitPass(5, "sync"), "alpha"); res.Status != reconciler.StatusRolledBack {
		t.Fatalf("a sync did not try the recreate again: %+v", res)
	}
	lc.commit("alpha fixed", map[string]string{"sut/alpha.lab.yaml": "env: {FIXED: \"1\"}\n"})
	if res := resultOf(lc.pass(6, "fix"), "alpha"); res.Status != reconciler.StatusOK {
		t.Fatalf("the fixed change was not applied: %+v", res)
	}
}

// --force-prune lets the daemon's first pass past the prune guard, and
// no later one: a later revision that empties the lab removes nothing.
func TestForcePruneIsForTheNextPassOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := startedLab(t, func(o *reconciler.ControllerOptions) { o.ForcePrune = true }, "alpha", "beta")
	lc.commit("remove every SUT", map[string]string{"sut/alpha.conf": "", "sut/alpha_snappy.yaml": "", "sut/beta.conf": "", "sut/beta_snappy.yaml": ""})
	r := lc.pass(2, "empty lab")
	if !r.Plan.PruneBlocked {
		t.Errorf("the second pass was not guarded: %+v", r.Plan.Actions)
	}
	if n := len(lc.agents(ctx)); n != 2 {
		t.Fatalf("%d agents left after a revision that empties the lab, want both kept", n)
	}
}

// A daemon that starts on an invalid revision keeps the host at the
// revision its containers were made at: it repairs what is missing
// instead of converging nothing.
func TestStartOnAnInvalidHeadKeepsTheLastApplied(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := newLiveController(t, func(name, image string) map[string]string { return labFiles(name, image, "alpha", "beta") }, nil, nil)
	first := lc.start()
	if first.Result != reconciler.ResultOK {
		t.Fatalf("first pass: %s: %s", first.Result, first.Error)
	}
	lc.commit("broken", map[string]string{"sut/beta.conf": "agent_id: beta\njob_queues: [beta\n", "lab.yaml": "name: [\n"})
	if err := lc.rt.RemoveContainer(ctx, lc.agents(ctx)["beta"].ID); err != nil {
		t.Fatal(err)
	}
	r := lc.restart()
	if r.Result != reconciler.ResultInvalid || r.Applied != first.Revision || !strings.Contains(r.Error, "the host stays at "+first.Revision[:12]) {
		t.Fatalf("pass on the invalid head: %s, applied %q: %s; want invalid, applied %s", r.Result, r.Applied, r.Error, first.Revision[:12])
	}
	if got := lc.agents(ctx); got["beta"].State != "running" || got["alpha"].State != "running" {
		t.Fatalf("after the restart on an invalid head: %v; want alpha and beta running", got)
	}
}

// A hand change that keeps the labels is found by the drift check only:
// an ordinary pass leaves it, the drift-check pass recreates the agent,
// naming the field.
func TestDriftCheckRepairsAHandChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := startedLab(t, nil, "alpha")
	old := lc.agents(ctx)["alpha"]
	if err := lc.rt.SetRestartPolicy(ctx, old.ID, "no"); err != nil {
		t.Fatal(err)
	}
	if r := lc.pass(2, "poll"); len(r.Results) != 0 {
		t.Fatalf("an ordinary pass acted: %+v", r.Results)
	}
	lc.ctrl.TriggerDriftCheck("schedule: drift check")
	r := lc.waitPass(3, "drift check")
	if res := resultOf(r, "alpha"); res.Status != reconciler.StatusOK || res.Action.Kind != reconciler.Recreate ||
		!strings.Contains(strings.Join(res.Action.Reasons, "; "), "restart policy changed by hand") {
		t.Fatalf("drift check: %+v, want alpha recreated for its restart policy", res)
	}
	if r := lc.pass(4, "poll"); len(r.Results) != 0 {
		t.Fatalf("the pass after the repair acted: %+v", r.Results)
	}
}

// A renamed lab is refused while containers of its old name run: they
// and their devices would be invisible to it. Started with --adopt-lab
// OLD, the daemon replaces them stop-first with the new name's.
func TestRenamedLabIsRefusedUntilAdopted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	record := t.TempDir() + "/lab-identity.json"
	lc := startedLab(t, func(o *reconciler.ControllerOptions) {
		o.Identity, o.IdentityFile = "https://git.example/"+t.Name(), record
	}, "alpha", "beta")
	before := lc.agents(ctx)
	newName := lc.name + "-new"
	testenv.CleanupLab(t, lc.rt, newName)
	lc.commit("rename", map[string]string{"lab.yaml": labFiles(newName, lc.image)["lab.yaml"]})
	r := lc.pass(2, "rename")
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "renamed from "+lc.name+" to "+newName) || !strings.Contains(r.Error, "--adopt-lab "+lc.name) {
		t.Fatalf("pass after the rename: %s: %s; want it refused, naming --adopt-lab", r.Result, r.Error)
	}
	if obs, _ := lc.rt.Observe(ctx, newName); len(obs.Containers) != 0 {
		t.Fatalf("the renamed lab made %d container(s) beside the old ones", len(obs.Containers))
	}
	for name, c := range lc.agents(ctx) {
		if c.ID != before[name].ID || c.State != "running" {
			t.Fatalf("the old lab's %s was touched: %+v", name, c)
		}
	}

	lc.opts.AdoptLab = lc.name
	if r := lc.restart(); r.Result != reconciler.ResultOK {
		t.Fatalf("pass with --adopt-lab: %s: %s %+v", r.Result, r.Error, r.Results)
	}
	if old := lc.agents(ctx); len(old) != 0 {
		t.Errorf("containers of the old name left: %v", old)
	}
	obs, err := lc.rt.Observe(ctx, newName)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range obs.Containers {
		if c.State != "running" || c.Source != "https://git.example/"+t.Name() {
			t.Errorf("new container %s: %s, source %q", c.Name, c.State, c.Source)
		}
	}
	if len(obs.Containers) != 2 {
		t.Fatalf("%d containers of the new name, want alpha and beta", len(obs.Containers))
	}
}

// Two labs of one name on one engine would prune each other: the second
// is refused, and the first's containers are left as they run.
func TestTwoLabsOfOneNameAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := startedLab(t, func(o *reconciler.ControllerOptions) {
		o.Identity, o.IdentityFile = "https://git.example/team-a/"+t.Name(), t.TempDir()+"/lab-identity.json"
	}, "alpha")
	before := lc.agents(ctx)["alpha"]
	// Another daemon, of another repository with the same base name.
	lc.opts.Identity, lc.opts.IdentityFile = "https://git.example/team-b/"+t.Name(), t.TempDir()+"/lab-identity.json"
	lc.commit("team b's lab", map[string]string{"sut/alpha.conf": "", "sut/alpha_snappy.yaml": "", "sut/gamma.conf": agentConf("gamma")})
	r := lc.restart()
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "another lab of that name, from https://git.example/team-a/"+t.Name()) {
		t.Fatalf("second lab of the name: %s: %s; want it refused", r.Result, r.Error)
	}
	if got := lc.agents(ctx); len(got) != 1 || got["alpha"].ID != before.ID || got["alpha"].State != "running" {
		t.Fatalf("the first lab's containers were touched: %v", got)
	}
}

// A takeover under --adopt-lab goes on after a restart without the flag,
// until no container of the old name is left: the old name's containers
// stay visible, and a new agent on the device of one of them waits for
// it to stop.
func TestAdoptLabGoesOnAfterARestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	record := t.TempDir() + "/identity.json"
	lc := startedLab(t, func(o *reconciler.ControllerOptions) {
		o.Identity, o.IdentityFile = "https://git.example/"+t.Name(), record
	}, "alpha", "beta")
	oldBeta := lc.agents(ctx)["beta"]
	newName := lc.name + "-new"
	testenv.CleanupLab(t, lc.rt, newName)
	labYAML := labFiles(newName, lc.image)["lab.yaml"] + "prune: {enabled: false}\n"
	lc.commit("rename, beta gone", map[string]string{"lab.yaml": labYAML, "sut/beta.conf": "", "sut/beta_snappy.yaml": ""})
	// The repository moved as well: the old containers carry its old URL.
	lc.opts.AdoptLab, lc.opts.Identity = lc.name, "https://git.example/moved/"+t.Name()
	if r := lc.restart(); r.Result != reconciler.ResultOK {
		t.Fatalf("pass with --adopt-lab: %s: %s", r.Result, r.Error)
	}
	if got := lc.agents(ctx); len(got) != 1 || got["beta"].ID != oldBeta.ID {
		t.Fatalf("old name's containers after the takeover pass: %v; want beta kept (prune is disabled)", got)
	}

	lc.opts.AdoptLab = ""
	r := lc.restart()
	if r.Result != reconciler.ResultOK || !strings.Contains(strings.Join(r.Plan.Warnings, "\n"), "prune is disabled") {
		t.Fatalf("restart without the flag: %s: %s; warnings %q: the old beta is not seen", r.Result, r.Error, r.Plan.Warnings)
	}
	gamma := labFiles(newName, lc.image, "alpha", "gamma")
	lc.commit("gamma on beta's device", map[string]string{"sut/gamma.conf": gamma["sut/gamma.conf"], "sut/gamma_snappy.yaml": gamma["sut/gamma_snappy.yaml"]})
	lc.pass(2, "gamma")
	if b := lc.agents(ctx)["beta"]; b.State == "running" {
		t.Fatalf("gamma took beta's device while the old beta runs: %+v", b)
	}
}

// A second lab of the name that appears after the first pass (two
// daemons started together on an empty engine) is refused at the next
// pass, before it is planned: its container is not pruned.
func TestLabOfTheSameNameAppearingLaterIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lc := startedLab(t, func(o *reconciler.ControllerOptions) { o.Identity = "https://git.example/team-a/" + t.Name() }, "alpha")
	labels := runtime.ManagedLabels(&lab.ContainerSpec{Kind: lab.KindAgent, Name: "zeta"}, lc.name, "other")
	labels[runtime.LabelSource] = "https://git.example/team-b/" + t.Name()
	resp, err := lc.rt.API().ContainerCreate(ctx, &container.Config{Image: lc.image, Cmd: []string{"testflinger-server", "--listen", ":8000"}, Labels: labels},
		nil, nil, nil, lc.name+"-zeta")
	if err != nil {
		t.Fatal(err)
	}
	r := lc.pass(2, "poll")
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "another lab of that name") {
		t.Fatalf("pass after the other lab's container appeared: %s: %s; want it refused", r.Result, r.Error)
	}
	if _, err := lc.rt.API().ContainerInspect(ctx, resp.ID); err != nil {
		t.Fatalf("the other lab's container was removed: %v", err)
	}
}

// Daemons of two labs may share a data folder, each with the record of
// its own repository. A lab that has none there yet (new, or moved) is
// refused while a lab recorded there has containers: it may be that lab
// moved and renamed. The error says both ways out, and nothing of the
// first lab is touched.
func TestTwoLabsShareADataDir(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dataDir := t.TempDir()
	a := "https://git.example/a/" + t.Name()
	lc := startedLab(t, func(o *reconciler.ControllerOptions) {
		o.Identity, o.IdentityFile = a, reconciler.IdentityFile(dataDir, a)
	}, "alpha")
	first := lc.agents(ctx)["alpha"]
	// Another lab, of another repository and name, with the same folder.
	other := lc.name + "-b"
	testenv.CleanupLab(t, lc.rt, other)
	lc.commit("lab b", map[string]string{"lab.yaml": labFiles(other, lc.image)["lab.yaml"], "sut/alpha.conf": "", "sut/alpha_snappy.yaml": "",
		"sut/gamma.conf": agentConf("gamma"), "sut/gamma_snappy.yaml": "device_ip: 10.250.1.99\n"})
	b := "https://git.example/b/" + t.Name()
	lc.opts.Identity, lc.opts.IdentityFile = b, reconciler.IdentityFile(dataDir, b)
	r := lc.restart()
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "--adopt-lab "+lc.name) || !strings.Contains(r.Error, "--data-dir of its own") {
		t.Fatalf("second lab: %s: %s; want it refused, naming both ways out", r.Result, r.Error)
	}
	if got := lc.agents(ctx)["alpha"]; got.ID != first.ID || got.State != "running" {
		t.Fatalf("the first lab's agent was touched: %+v", got)
	}
}

// A lab renamed while its repository moved is linked to its old name by
// the record its daemon left in the data folder: it is refused, and
// --adopt-lab takes the old containers over.
func TestMovedAndRenamedLabIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dataDir := t.TempDir()
	a := "https://git.example/org/lab-" + t.Name()
	lc := startedLab(t, func(o *reconciler.ControllerOptions) {
		o.Identity, o.IdentityFile = a, reconciler.IdentityFile(dataDir, a)
	}, "alpha")
	newName := lc.name + "-x"
	testenv.CleanupLab(t, lc.rt, newName)
	lc.commit("renamed", map[string]string{"lab.yaml": labFiles(newName, lc.image)["lab.yaml"]})
	b := "https://git.example/org/lab-x-" + t.Name()
	lc.opts.Identity, lc.opts.IdentityFile = b, reconciler.IdentityFile(dataDir, b)
	r := lc.restart()
	if r.Result != reconciler.ResultError || !strings.Contains(r.Error, "--adopt-lab "+lc.name) {
		t.Fatalf("moved and renamed lab: %s: %s; want it refused for the device", r.Result, r.Error)
	}
	if obs, _ := lc.rt.Observe(ctx, newName); len(obs.Containers) != 0 {
		t.Fatalf("the moved lab made %d container(s) beside the old ones", len(obs.Containers))
	}
	lc.opts.AdoptLab = lc.name
	if r := lc.restart(); r.Result != reconciler.ResultOK {
		t.Fatalf("with --adopt-lab: %s: %s", r.Result, r.Error)
	}
	if old := lc.agents(ctx); len(old) != 0 {
		t.Errorf("containers of the old name left: %v", old)
	}
}
