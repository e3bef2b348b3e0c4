package reconciler_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// soak selects the full fault and crash suites (make soak); make test
// runs a few seeds.
func soak() bool { return os.Getenv("LABSYNC_SOAK") == "1" }

// faultLabAgents is the size of the lab the fault suite converges: 20
// agents in the full suite, 8 in make test.
func faultLabAgents() int {
	if soak() {
		return 20
	}
	return 8
}

// faultParallelism is how many agents the fault suite changes at once.
const faultParallelism = 8

// maxFaultPasses bounds the passes a phase may need under faults. A
// recreate makes seven mutating calls and starts again (after a rollback)
// when one fails: with one call in five failing, one pass recreates an
// agent with a chance of about 0.8^7 = 0.21, so twenty agents need about
// twenty passes at worst.
const maxFaultPasses = 30

// planThrough plans l's lab with what rt observes.
func (l *liveLab) planThrough(ctx context.Context, rt *runtime.Client) *reconciler.Changeset {
	l.t.Helper()
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{DefaultName: l.name})
	if err != nil {
		l.t.Fatalf("load: %v", err)
	}
	obs, err := rt.Observe(ctx, l.name)
	if err != nil {
		l.t.Fatalf("observe: %v", err)
	}
	return reconciler.Plan(lab.Compile(lb, lab.CompileOptions{}), obs, reconciler.PlanOptions{})
}

// convergeThrough plans and applies through rt until the plan against the
// real engine is empty, and returns the passes it took.
func (l *liveLab) convergeThrough(ctx context.Context, rt *runtime.Client, bound int) int {
	l.t.Helper()
	var last []string
	for pass := 0; ; pass++ {
		p := l.plan(ctx)
		if p.Empty() {
			return pass
		}
		if pass == bound {
			l.t.Fatalf("not converged after %d passes under faults; the plan is still %v; the last pass:\n%s", bound, actionsOf(p), strings.Join(last, "\n"))
		}
		start := time.Now()
		r := reconciler.Apply(ctx, rt, l.planThrough(ctx, rt), reconciler.ApplyOptions{StopTimeout: 2 * time.Second, Parallelism: faultParallelism})
		last = []string{fmt.Sprintf("pass %d: %d actions in %s", pass+1, len(r.Results), time.Since(start).Round(time.Millisecond))}
		for _, res := range r.Results {
			if res.Status != reconciler.StatusOK {
				last = append(last, fmt.Sprintf("  %s %s: %s: %s", res.Action.Kind, res.Action.Object, res.Status, res.Error))
			}
		}
		l.t.Log(last[0])
	}
}

// checkConverged asserts the lab runs exactly want (object names), each
// once, running, never restarted, with its spec's restart policy, nothing
// set aside.
func (l *liveLab) checkConverged(ctx context.Context, want []string) {
	l.t.Helper()
	cs := l.containers(ctx)
	var got []string
	for name, c := range cs {
		got = append(got, strings.TrimPrefix(name, l.name+"-"))
		if c.State != "running" {
			l.t.Errorf("%s is %s, want running", name, c.State)
		}
		info, err := l.rt.API().ContainerInspect(ctx, c.ID)
		if err != nil {
			l.t.Fatal(err)
		}
		if want := map[string]container.RestartPolicyMode{"agent": "always", "service": "no"}[c.Labels[runtime.LabelKind]]; info.HostConfig.RestartPolicy.Name != want {
			l.t.Errorf("%s has restart policy %q, want %q", name, info.HostConfig.RestartPolicy.Name, want)
		}
		if info.RestartCount != 0 {
			l.t.Errorf("%s was restarted %d times: it exits", name, info.RestartCount)
		}
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		l.t.Errorf("the lab's containers are %v, want %v", got, want)
	}
}

func agentNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("a%02d", i+1)
	}
	return out
}

// faultFigures are what one seed of the fault suite measured.
type faultFigures struct {
	seed     uint64
	passes   []int // per phase
	injected int
	calls    int
}

// runFaultSeed converges a lab of faultLabAgents agents through a proxy
// with faults, in three phases: create everything, recreate every agent,
// remove a quarter of them. At no moment may two containers run for one
// device or object; nothing may be left over; strangers stay untouched.
func runFaultSeed(t *testing.T, seed uint64, faults []testenv.Fault) faultFigures {
	ctx := context.Background()
	agents := agentNames(faultLabAgents())
	l := newLiveLab(t, agents...)
	l.write("lab.yaml", fmt.Sprintf(`name: %[1]s
container_prefix: %[1]s-
agents:
  image:
    name: %[2]s
  command: [testflinger-agent, -c, '{conf}']
  healthcheck: {disable: true}
  update:
    min_uptime: 300ms
    start_timeout: 30s
`, l.name, l.image))
	strangers := []testenv.Stranger{testenv.StartStranger(t, l.rt, l.image, l.name+"-a07-1"), testenv.StartStranger(t, l.rt, l.image, l.name+"-a99")}
	watch := testenv.WatchDevices(t, l.rt, l.name)
	proxy := testenv.NewFaultProxy(t, seed, faults...)
	faulty := proxy.Client(t)
	fig := faultFigures{seed: proxy.Seed()}

	check := func(phase string, want []string) {
		t.Helper()
		watch.Sync(t, l.rt, l.name, l.image)
		if v := watch.Violations(); len(v) > 0 {
			t.Errorf("%s: two containers ran at once: %v", phase, v)
		}
		l.checkConverged(ctx, want)
		for _, s := range strangers {
			s.Check(t, l.rt)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	want := append([]string{"api"}, agents...)

	fig.passes = append(fig.passes, l.convergeThrough(ctx, faulty, maxFaultPasses))
	check("create", want)

	for _, a := range agents {
		l.write("sut/"+a+".conf", strings.Replace(agentConf(a), "polling_interval: 30", "polling_interval: 29", 1))
	}
	fig.passes = append(fig.passes, l.convergeThrough(ctx, faulty, maxFaultPasses))
	check("recreate", want)

	removed := agents[len(agents)*3/4:]
	for _, a := range removed {
		l.remove("sut/" + a + ".conf")
		l.remove("sut/" + a + "_snappy.yaml")
	}
	fig.passes = append(fig.passes, l.convergeThrough(ctx, faulty, maxFaultPasses))
	check("remove", want[:len(want)-len(removed)])

	fig.injected, fig.calls = proxy.Injected(), proxy.Calls()
	t.Logf("seed %d: passes (create, recreate, remove) %v; %s", fig.seed, fig.passes, strings.SplitN(proxy.Summary(), ":", 2)[0])
	return fig
}

// runFaultSuite runs seeds of runFaultSeed one after another and reports
// the figures: faults injected and passes needed, median and worst.
func runFaultSuite(t *testing.T, faults []testenv.Fault, seeds []uint64) {
	var figs []faultFigures
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			figs = append(figs, runFaultSeed(t, seed, faults))
		})
	}
	if len(figs) == 0 {
		return
	}
	var passes []int
	injected, calls := 0, 0
	for _, f := range figs {
		passes = append(passes, f.passes...)
		injected += f.injected
		calls += f.calls
	}
	slices.Sort(passes)
	t.Logf("%d seed(s) x 3 phases, %d agents: passes to converge median %d, worst %d; %d faults injected in %d calls",
		len(figs), faultLabAgents(), passes[len(passes)/2], passes[len(passes)-1], injected, calls)
}

func faultSeeds(short, full int) []uint64 {
	n := short
	if soak() {
		n = full
	}
	seeds := make([]uint64, n)
	for i := range seeds {
		seeds[i] = uint64(1000 + i)
	}
	return seeds
}

// One mutating call in five fails: half before the engine sees it, half
// after it did it.
func TestFaultMutatingCallsFail(t *testing.T) {
	t.Parallel()
	mutating := testenv.Match{Method: testenv.MethodMutating}
	runFaultSuite(t, []testenv.Fault{
		{Match: mutating, Kind: testenv.FaultFail, Rate: 0.1},
		{Match: mutating, Kind: testenv.FaultFailAfter, Rate: 0.1},
	}, faultSeeds(1, 6))
}

// Connections drop in the middle of the apply: before a mutating call
// reaches the engine, or after the engine did it and before the answer;
// some reads are slow.
func TestFaultConnectionsDropped(t *testing.T) {
	t.Parallel()
	mutating := testenv.Match{Method: testenv.MethodMutating}
	runFaultSuite(t, []testenv.Fault{
		{Match: mutating, Kind: testenv.FaultDrop, Rate: 0.1},
		{Match: mutating, Kind: testenv.FaultDropAfter, Rate: 0.1},
		{Match: testenv.Match{Method: "GET", Path: `^/containers/[^/]+/json$`}, Kind: testenv.FaultDelay, Rate: 0.1, Delay: 300 * time.Millisecond},
	}, faultSeeds(1, 6))
}

// A rollback killed after it gave the old container its name back but
// before its restart policy: the container is stopped with policy "no",
// which its labels do not show. Once the revision is reverted, the start
// that repairs it gives the policy back, so a reboot brings it up.
func TestCrashBeforeRestartPolicyRestoreIsRepaired(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)
	c := l.containers(ctx)[l.name+"-alpha"]
	if err := l.rt.SetRestartPolicy(ctx, c.ID, "no"); err != nil {
		t.Fatal(err)
	}
	if err := l.rt.StopContainer(ctx, c.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	p := l.applyOK(ctx)
	if got := actionsOf(p); len(got) != 1 || got[0] != "start alpha" {
		t.Fatalf("plan = %v, want [start alpha]", got)
	}
	info, err := l.rt.API().ContainerInspect(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !info.State.Running || info.HostConfig.RestartPolicy.Name != "always" {
		t.Errorf("alpha: running %v, restart policy %q; want running with policy always", info.State.Running, info.HostConfig.RestartPolicy.Name)
	}
}
