package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// The crash suite kills labsync apply, a process of its own, with SIGKILL
// while the fault proxy holds one chosen Docker call of a create, a
// recreate, a rollback or a remove: before the engine saw the call, or
// after the engine did it and before labsync heard. Then labsync apply
// runs again on the real engine until the plan is empty. At no moment may
// two containers run for one device or object; nothing may be left over;
// every container has its spec's restart policy; a stranger with a
// look-alike name is never touched.

// soak selects the full crash suite (make soak); make test runs a few
// points.
func soak() bool { return os.Getenv("LABSYNC_SOAK") == "1" }

// Scenarios: the change the killed apply makes.
const (
	scenarioCreate   = "create"   // add gamma
	scenarioRecreate = "recreate" // change alpha's conf
	scenarioRollback = "rollback" // alpha's new container cannot start
	scenarioRemove   = "remove"   // delete gamma
)

// crashPoint is one call to kill labsync at.
type crashPoint struct {
	scenario string
	// step names the call; the point's name is scenario/step/before|after.
	step  string
	match testenv.Match
	nth   int
	after bool
	// revert reverts the change right after the kill. Without it a
	// rollback's failing revision is applied once more first.
	revert bool
}

func (c crashPoint) name() string {
	when := "before"
	if c.after {
		when = "after"
	}
	s := c.scenario + "/" + c.step + "/" + when
	if c.revert {
		s += "/revert"
	}
	return s
}

const idPath = `^/containers/[0-9a-f]{64}`

func post(path string) testenv.Match {
	return testenv.Match{Method: http.MethodPost, Path: idPath + path + "$"}
}

var (
	matchUpdate = post("/update")
	matchStop   = post("/stop")
	matchStart  = post("/start")
	matchRename = post("/rename")
	matchCopy   = testenv.Match{Method: http.MethodPut, Path: idPath + "/archive$"}
	matchDelete = testenv.Match{Method: http.MethodDelete, Path: idPath + "$"}
)

func matchCreate(object string) testenv.Match {
	return testenv.Match{Method: http.MethodPost, Path: `^/containers/create$`, Query: `name=[^&]*-` + object + `$`}
}

// crashPoints lists every point, each before and after the engine.
func crashPoints() []crashPoint {
	type call struct {
		scenario, step string
		match          testenv.Match
		nth            int
	}
	calls := []call{
		{scenarioCreate, "create", matchCreate("gamma"), 1},
		{scenarioCreate, "copy-files", matchCopy, 1},
		{scenarioCreate, "start", matchStart, 1},

		{scenarioRecreate, "restart-policy-no", matchUpdate, 1},
		{scenarioRecreate, "stop-old", matchStop, 1},
		{scenarioRecreate, "set-aside", matchRename, 1},
		{scenarioRecreate, "create-new", matchCreate("alpha"), 1},
		{scenarioRecreate, "copy-files", matchCopy, 1},
		{scenarioRecreate, "start-new", matchStart, 1},
		{scenarioRecreate, "remove-old", matchDelete, 1},

		{scenarioRollback, "remove-new", matchDelete, 1},
		{scenarioRollback, "rename-back", matchRename, 2},
		{scenarioRollback, "restart-policy-back", matchUpdate, 2},
		{scenarioRollback, "start-old", matchStart, 2},

		{scenarioRemove, "stop", matchStop, 1},
		{scenarioRemove, "remove", matchDelete, 1},
	}
	var out []crashPoint
	for _, c := range calls {
		for _, after := range []bool{false, true} {
			out = append(out, crashPoint{scenario: c.scenario, step: c.step, match: c.match, nth: c.nth, after: after})
		}
	}
	// The change reverted after the kill: a rollback's failing revision
	// fixed, a recreate's change taken back.
	for _, c := range calls {
		switch c.scenario {
		case scenarioRollback:
			out = append(out, crashPoint{scenario: c.scenario, step: c.step, match: c.match, nth: c.nth, revert: true})
		case scenarioRecreate:
			out = append(out, crashPoint{scenario: c.scenario, step: c.step, match: c.match, nth: c.nth, after: true, revert: true})
		}
	}
	return out
}

// shortCrashPoints are the points make test runs: one of each scenario
// and both sides of the engine.
var shortCrashPoints = []string{
	"create/create/after",
	"create/copy-files/before",
	"recreate/set-aside/before",
	"recreate/start-new/after",
	"rollback/rename-back/before",
	"rollback/restart-policy-back/before/revert",
	"remove/stop/after",
}

// crashLab is a lab repository applied by labsync processes.
type crashLab struct {
	t     *testing.T
	dir   string
	name  string
	image string
	bin   string
	rt    *runtime.Client
}

var crashDevices = map[string]string{"alpha": "10.251.0.1", "beta": "10.251.0.2", "gamma": "10.251.0.3"}

func newCrashLab(t *testing.T, agents ...string) *crashLab {
	t.Helper()
	rt := testenv.Docker(t)
	l := &crashLab{t: t, dir: t.TempDir(), name: testenv.Name(t), rt: rt, image: testenv.StandinImage(t, rt), bin: testenv.LabsyncBinary(t)}
	testenv.CleanupLab(t, rt, l.name)
	files := map[string]string{"lab.yaml": fmt.Sprintf(`name: %[1]s
container_prefix: %[1]s-
agents:
  image: {name: %[2]s}
  command: [testflinger-agent, -c, '{conf}']
  healthcheck: {disable: true}
  update: {min_uptime: 500ms, start_timeout: 20s}
`, l.name, l.image)}
	for _, a := range agents {
		l.addAgent(a, files)
	}
	testenv.WriteFiles(t, l.dir, files)
	return l
}

func (l *crashLab) addAgent(a string, files map[string]string) {
	files["sut/"+a+".conf"] = agentConfFor(a)
	files["sut/"+a+"_snappy.yaml"] = "device_ip: " + crashDevices[a] + "\n"
}

// labsync starts labsync apply on the Docker host given.
func (l *crashLab) labsync(dockerHost string) (*exec.Cmd, *testenv.SyncBuffer) {
	l.t.Helper()
	cmd := exec.Command(l.bin, "apply", "--stop-timeout", "2s", "--data-dir", l.t.TempDir(), l.dir)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "DOCKER_HOST=") && !strings.HasPrefix(e, "LABSYNC_") && !strings.HasPrefix(e, "PATH=") {
			env = append(env, e)
		}
	}
	// No labsync-agent to give agents: the image has its own.
	cmd.Env = append(env, "DOCKER_HOST="+dockerHost, "PATH="+l.t.TempDir())
	out := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own, killed whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	return cmd, out
}

// apply runs labsync apply on the real engine to its end.
func (l *crashLab) apply() (string, error) {
	l.t.Helper()
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	cmd, out := l.labsync(host)
	err := cmd.Wait()
	return out.String(), err
}

func (l *crashLab) plan() *reconciler.Changeset {
	l.t.Helper()
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{})
	if err != nil {
		l.t.Fatalf("load: %v", err)
	}
	obs, err := l.rt.Observe(context.Background(), l.name)
	if err != nil {
		l.t.Fatal(err)
	}
	return reconciler.Plan(lab.Compile(lb, lab.CompileOptions{}), obs, reconciler.PlanOptions{})
}

func planActions(p *reconciler.Changeset) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, string(a.Kind)+" "+a.Object)
	}
	return out
}

// containers returns the lab's containers by object name: fails on two
// of one object.
func (l *crashLab) containers() map[string]container.InspectResponse {
	l.t.Helper()
	ctx := context.Background()
	cs, err := l.rt.API().ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+l.name))})
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]container.InspectResponse{}
	for _, c := range cs {
		info, err := l.rt.API().ContainerInspect(ctx, c.ID)
		if err != nil {
			l.t.Fatal(err)
		}
		obj := strings.TrimPrefix(info.Name, "/"+l.name+"-")
		if _, dup := out[obj]; dup {
			l.t.Errorf("two containers named for %s", obj)
		}
		out[obj] = info
	}
	return out
}

// converge applies on the real engine until the plan is empty.
func (l *crashLab) converge(maxRuns int) {
	l.t.Helper()
	var outs []string
	for run := 0; ; run++ {
		p := l.plan()
		if p.Empty() {
			return
		}
		if run == maxRuns {
			l.t.Fatalf("not converged after %d applies; the plan is %v; their output:\n%s", maxRuns, planActions(p), strings.Join(outs, "\n---\n"))
		}
		out, _ := l.apply()
		outs = append(outs, out)
	}
}

// checkRuns asserts the lab runs exactly agents, each running under its
// name with restart policy always and its conf, never restarted, nothing
// set aside.
func (l *crashLab) checkRuns(agents ...string) {
	l.t.Helper()
	cs := l.containers()
	got := make([]string, 0, len(cs))
	for obj, c := range cs {
		got = append(got, obj)
		if !c.State.Running {
			l.t.Errorf("%s is %s, want running", obj, c.State.Status)
		}
		if c.HostConfig.RestartPolicy.Name != "always" {
			l.t.Errorf("%s has restart policy %q, want always", obj, c.HostConfig.RestartPolicy.Name)
		}
		if c.RestartCount != 0 {
			l.t.Errorf("%s was restarted %d times: its agent exits", obj, c.RestartCount)
		}
		conf, err := testenv.ReadContainerFile(context.Background(), l.rt, c.ID, "/data/testflinger-agent/sut/"+obj+".conf")
		want, _ := os.ReadFile(l.dir + "/sut/" + obj + ".conf")
		if err != nil || string(conf) != string(want) {
			l.t.Errorf("%s's conf in the container is %q (%v), want the repository's %q", obj, conf, err, want)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, agents) {
		l.t.Errorf("the lab's containers are %v, want %v", got, agents)
	}
}

func runCrashPoint(t *testing.T, cp crashPoint) {
	agents := []string{"alpha", "beta"}
	if cp.scenario == scenarioRemove {
		agents = append(agents, "gamma")
	}
	l := newCrashLab(t, agents...)
	if out, err := l.apply(); err != nil {
		t.Fatalf("first apply: %v\n%s", err, out)
	}
	alpha := l.containers()["alpha"]
	strangerName := l.name + "-alpha-1"
	s := testenv.StartStranger(t, l.rt, l.image, strangerName)
	watch := testenv.WatchDevices(t, l.rt, l.name)

	want := agents
	switch cp.scenario {
	case scenarioCreate:
		files := map[string]string{}
		l.addAgent("gamma", files)
		testenv.WriteFiles(t, l.dir, files)
		want = []string{"alpha", "beta", "gamma"}
	case scenarioRecreate:
		testenv.WriteFiles(t, l.dir, map[string]string{"sut/alpha.conf": strings.Replace(agentConfFor("alpha"), "polling_interval: 60", "polling_interval: 59", 1)})
	case scenarioRollback:
		// The new container cannot start, however loaded the host.
		testenv.WriteFiles(t, l.dir, map[string]string{"sut/alpha.lab.yaml": "command: [/no/such/program]\n"})
	case scenarioRemove:
		for _, f := range []string{"sut/gamma.conf", "sut/gamma_snappy.yaml"} {
			if err := os.Remove(l.dir + "/" + f); err != nil {
				t.Fatal(err)
			}
		}
		want = []string{"alpha", "beta"}
	}

	proxy := testenv.NewFaultProxy(t, 1)
	hold := proxy.Hold(cp.match, cp.nth, cp.after)
	cmd, out := l.labsync(proxy.Host())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-hold.Held:
	case err := <-exited:
		t.Fatalf("labsync apply ended (%v) before %s:\n%s", err, hold, out)
	case <-time.After(90 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("%s never came:\n%s", hold, out)
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	select {
	case <-hold.Done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the held call %s was not dropped after the kill", hold.Call())
	}
	if !hold.Dropped() {
		t.Fatalf("the held call %s was answered", hold.Call())
	}
	t.Logf("killed at %s (%s)", hold.Call(), hold)

	if cp.scenario == scenarioRecreate && cp.revert {
		testenv.WriteFiles(t, l.dir, map[string]string{"sut/alpha.conf": agentConfFor("alpha")})
	}
	if cp.scenario == scenarioRollback {
		if !cp.revert {
			// The failing revision again: rolled back, the old container
			// running under its name.
			o, err := l.apply()
			if err == nil {
				t.Errorf("the failing revision applied without error:\n%s", o)
			}
			if p := planActions(l.plan()); !slices.Equal(p, []string{"recreate alpha"}) {
				t.Errorf("after the failing revision again, the plan is %v, want [recreate alpha]\n%s", p, o)
			}
			cs := l.containers()
			if c := cs["alpha"]; c.ID != alpha.ID || !c.State.Running {
				t.Errorf("alpha is %s (running %v), want the old container %s running\n%s", c.ID, c.State != nil && c.State.Running, alpha.ID, o)
			}
			if len(cs) != len(agents) {
				t.Errorf("after the rollback the lab has %d containers, want %d", len(cs), len(agents))
			}
		}
		if err := os.Remove(l.dir + "/sut/alpha.lab.yaml"); err != nil {
			t.Fatal(err)
		}
	}
	l.converge(3)
	watch.Sync(t, l.rt, l.name, l.image)
	if v := watch.Violations(); len(v) > 0 {
		t.Errorf("two containers ran at once: %v", v)
	}
	l.checkRuns(want...)
	s.Check(t, l.rt)
}

// TestCrashPoints kills labsync apply at each point (a few in make test,
// all with LABSYNC_SOAK=1) and checks that the next applies repair the
// lab.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	points := crashPoints()
	if len(points) < 20 {
		t.Fatalf("only %d crash points", len(points))
	}
	for _, cp := range points {
		if !soak() && !slices.Contains(shortCrashPoints, cp.name()) {
			continue
		}
		t.Run(cp.name(), func(t *testing.T) {
			t.Parallel()
			runCrashPoint(t, cp)
		})
	}
}
