package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// liveLab is a lab repository in a temporary folder, applied to the real
// engine under a name of its own.
type liveLab struct {
	t     *testing.T
	dir   string
	name  string
	image string
	rt    *runtime.Client
}

func agentConf(name string) string {
	return fmt.Sprintf(`agent_id: %[1]s
server_address: http://api:8000
job_queues:
  - %[1]s
polling_interval: 30
execution_basedir: /data/testflinger-agent/tests/%[1]s/run
logging_basedir: /data/testflinger-agent/tests/%[1]s/logs
results_basedir: /data/testflinger-agent/tests/%[1]s/results
`, name)
}

func newLiveLab(t *testing.T, agents ...string) *liveLab {
	t.Helper()
	rt := testenv.Docker(t)
	l := &liveLab{t: t, dir: t.TempDir(), name: testenv.Name(t), rt: rt}
	l.image = testenv.StandinImage(t, rt)
	testenv.CleanupLab(t, rt, l.name)
	files := map[string]string{
		"lab.yaml": fmt.Sprintf(`name: %[1]s
container_prefix: %[1]s-
agents:
  image:
    name: %[2]s
  healthcheck:
    test: [CMD, labsync-agent, healthcheck]
    interval: 1s
    timeout: 5s
    retries: 2
  update:
    min_uptime: 300ms
    start_timeout: 30s
`, l.name, l.image),
		"docker-compose.yaml": fmt.Sprintf(`services:
  api:
    image: %s
    command: ["testflinger-server", "--listen", ":8000"]
    healthcheck:
      test: ["CMD", "testflinger-server", "check", "http://localhost:8000/v1"]
      interval: 1s
      timeout: 5s
      retries: 5
    volumes:
      - data:/data
    networks: [lab]
networks:
  lab: {}
volumes:
  data: {}
`, l.image),
	}
	for i, a := range agents {
		files["sut/"+a+".conf"] = agentConf(a)
		files["sut/"+a+"_snappy.yaml"] = fmt.Sprintf("device_ip: 10.250.0.%d\nagent_name: %s\n", i+10, a)
	}
	testenv.WriteFiles(t, l.dir, files)
	return l
}

func (l *liveLab) write(name, content string) {
	testenv.WriteFiles(l.t, l.dir, map[string]string{name: content})
}

func (l *liveLab) remove(name string) {
	if err := os.Remove(filepath.Join(l.dir, name)); err != nil {
		l.t.Fatal(err)
	}
}

func (l *liveLab) plan(ctx context.Context) *reconciler.Changeset {
	l.t.Helper()
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{DefaultName: l.name})
	if err != nil {
		l.t.Fatalf("load: %v", err)
	}
	obs, err := l.rt.Observe(ctx, l.name)
	if err != nil {
		l.t.Fatalf("observe: %v", err)
	}
	return reconciler.Plan(lab.Compile(lb, lab.CompileOptions{}), obs, reconciler.PlanOptions{})
}

func (l *liveLab) apply(ctx context.Context, opts reconciler.ApplyOptions) (*reconciler.Changeset, *reconciler.Report) {
	l.t.Helper()
	p := l.plan(ctx)
	opts.StopTimeout = 2 * time.Second
	return p, reconciler.Apply(ctx, l.rt, p, opts)
}

func (l *liveLab) applyOK(ctx context.Context) *reconciler.Changeset {
	l.t.Helper()
	p, r := l.apply(ctx, reconciler.ApplyOptions{})
	for _, res := range r.Results {
		if res.Status != reconciler.StatusOK {
			l.t.Fatalf("%s %s: %s: %s", res.Action.Kind, res.Action.Object, res.Status, res.Error)
		}
	}
	return p
}

// containers returns the lab's containers by name, with their IDs.
func (l *liveLab) containers(ctx context.Context) map[string]container.Summary {
	l.t.Helper()
	cs, err := l.rt.API().ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+l.name))})
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]container.Summary{}
	for _, c := range cs {
		out[strings.TrimPrefix(c.Names[0], "/")] = c
	}
	return out
}

func actionsOf(p *reconciler.Changeset) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, string(a.Kind)+" "+a.Object)
	}
	return out
}

func TestApplyConvergesAndIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta", "gamma")
	l.applyOK(ctx)

	cs := l.containers(ctx)
	for _, name := range []string{"api", "alpha", "beta", "gamma"} {
		c, ok := cs[l.name+"-"+name]
		if !ok {
			t.Fatalf("container %s-%s missing; have %v", l.name, name, cs)
		}
		if c.State != "running" {
			t.Errorf("%s is %s, want running", name, c.State)
		}
		for k, want := range map[string]string{runtime.LabelManaged: "true", runtime.LabelLab: l.name, runtime.LabelObject: name, runtime.LabelSchema: lab.SchemaVersion} {
			if c.Labels[k] != want {
				t.Errorf("%s label %s = %q, want %q", name, k, c.Labels[k], want)
			}
		}
		if len(c.Labels[runtime.LabelHash]) != 64 {
			t.Errorf("%s has no spec hash label", name)
		}
	}
	if cs[l.name+"-alpha"].Labels[runtime.LabelKind] != "agent" || cs[l.name+"-api"].Labels[runtime.LabelKind] != "service" {
		t.Errorf("kind labels wrong")
	}

	// Files, read back through the archive API, are the repository's.
	for _, f := range []struct{ path, repo string }{
		{"/data/testflinger-agent/sut/beta.conf", "sut/beta.conf"},
		{"/data/snappy-device-agents/sut/beta_snappy.yaml", "sut/beta_snappy.yaml"},
	} {
		got, err := testenv.ReadContainerFile(ctx, l.rt, cs[l.name+"-beta"].ID, f.path)
		if err != nil {
			t.Fatalf("read %s: %v", f.path, err)
		}
		want, _ := os.ReadFile(filepath.Join(l.dir, f.repo))
		if string(got) != string(want) {
			t.Errorf("%s in container = %q, want %q", f.path, got, want)
		}
	}

	// Networks and volumes, labelled.
	lf := filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+l.name))
	nets, err := l.rt.API().NetworkList(ctx, network.ListOptions{Filters: lf})
	if err != nil || len(nets) != 1 || nets[0].Name != l.name+"_lab" {
		t.Fatalf("networks = %v (%v), want %s_lab", nets, err, l.name)
	}
	apiInfo, err := l.rt.API().ContainerInspect(ctx, cs[l.name+"-api"].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := apiInfo.NetworkSettings.Networks[l.name+"_lab"]; !ok {
		t.Errorf("api is not on %s_lab: %v", l.name, apiInfo.NetworkSettings.Networks)
	}
	vols, err := l.rt.API().VolumeList(ctx, volume.ListOptions{Filters: lf})
	if err != nil || len(vols.Volumes) != 1 || vols.Volumes[0].Name != l.name+"_data" {
		t.Fatalf("volumes = %v (%v), want %s_data", vols.Volumes, err, l.name)
	}

	// Apply again: nothing to do, and not one mutating API call.
	_, writesBefore := l.rt.Calls()
	p, r := l.apply(ctx, reconciler.ApplyOptions{})
	if !p.Empty() || len(r.Results) != 0 {
		t.Fatalf("second apply planned %v", actionsOf(p))
	}
	if _, writes := l.rt.Calls(); writes != writesBefore {
		t.Errorf("second apply made %d mutating API calls, want 0", writes-writesBefore)
	}
}

func TestChangedSUTRecreatesOnlyThatAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta", "gamma")
	l.applyOK(ctx)
	before := l.containers(ctx)

	l.write("sut/beta.conf", agentConf("beta")+"job_queues_typo_free: no\n")
	if ll, _ := lab.Load(os.DirFS(l.dir), lab.LoadOptions{}); len(ll.Held["beta"]) == 0 {
		t.Fatal("an unknown key should hold beta")
	}
	l.write("sut/beta.conf", strings.Replace(agentConf("beta"), "polling_interval: 30", "polling_interval: 31", 1))
	p := l.applyOK(ctx)
	if got := actionsOf(p); len(got) != 1 || got[0] != "recreate beta" {
		t.Fatalf("plan = %v, want [recreate beta]", got)
	}
	if want := "sut/beta.conf changed (polling_interval)"; p.Actions[0].Reasons[0] != want {
		t.Errorf("reason = %q, want %q", p.Actions[0].Reasons[0], want)
	}
	after := l.containers(ctx)
	for _, n := range []string{"api", "alpha", "gamma"} {
		if before[l.name+"-"+n].ID != after[l.name+"-"+n].ID {
			t.Errorf("%s was recreated", n)
		}
	}
	if before[l.name+"-beta"].ID == after[l.name+"-beta"].ID {
		t.Error("beta was not recreated")
	}
	if len(after) != 4 {
		t.Errorf("containers after recreate: %d, want 4 (no leftovers)", len(after))
	}
}

func TestDeletedSUTIsRemoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta", "gamma")
	l.applyOK(ctx)
	l.remove("sut/gamma.conf")
	l.remove("sut/gamma_snappy.yaml")
	p := l.applyOK(ctx)
	if got := actionsOf(p); len(got) != 1 || got[0] != "remove gamma" {
		t.Fatalf("plan = %v, want [remove gamma]", got)
	}
	if _, ok := l.containers(ctx)[l.name+"-gamma"]; ok {
		t.Error("gamma still exists")
	}
}

func TestForeignContainerIsNeverTouched(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	// A container labsync did not create, named like the agent.
	foreignName := l.name + "-alpha"
	resp, err := l.rt.API().ContainerCreate(ctx, &container.Config{Image: l.image, Cmd: []string{"testflinger-server", "--listen", ":9"}, Labels: map[string]string{testenv.LabelTest: "foreign"}}, nil, nil, nil, foreignName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.rt.API().ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	})
	if err := l.rt.API().ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	before, _ := l.rt.API().ContainerInspect(ctx, resp.ID)

	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	var alpha *reconciler.Result
	for i := range r.Results {
		if r.Results[i].Action.Object == "alpha" {
			alpha = &r.Results[i]
		}
	}
	if alpha == nil || alpha.Status != reconciler.StatusFailed || !strings.Contains(alpha.Error, "does not manage") {
		t.Fatalf("alpha result = %+v, want a failure naming the unmanaged container", alpha)
	}
	after, err := l.rt.API().ContainerInspect(ctx, resp.ID)
	if err != nil {
		t.Fatalf("foreign container gone: %v", err)
	}
	if after.Name != "/"+foreignName || !after.State.Running || after.State.StartedAt != before.State.StartedAt {
		t.Errorf("foreign container changed: name %s running %v started %s (was %s)", after.Name, after.State.Running, after.State.StartedAt, before.State.StartedAt)
	}
	// The lab's plan never sees it: a new plan wants to create alpha again,
	// and removes nothing.
	for _, a := range l.plan(ctx).Actions {
		if a.Kind == reconciler.Remove {
			t.Errorf("plan removes %s", a.Target)
		}
	}
}

func TestFailedRecreateRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)
	old := l.containers(ctx)[l.name+"-alpha"]

	// The new spec cannot start: its config path does not exist.
	l.write("sut/alpha.lab.yaml", "command: [testflinger-agent, -c, /nonexistent.conf]\n")
	p, r := l.apply(ctx, reconciler.ApplyOptions{})
	if got := actionsOf(p); len(got) != 1 || got[0] != "recreate alpha" {
		t.Fatalf("plan = %v", got)
	}
	res := r.Results[0]
	if res.Status != reconciler.StatusRolledBack || !strings.Contains(res.Error, "exited with code 1") && !strings.Contains(res.Error, "was restarted") {
		t.Fatalf("result = %s: %s; want rolled-back with the exit code", res.Status, res.Error)
	}
	if !strings.Contains(res.Error, "cannot read config") {
		t.Errorf("error lacks the container's last log line: %s", res.Error)
	}
	cs := l.containers(ctx)
	now, ok := cs[l.name+"-alpha"]
	if !ok || now.ID != old.ID {
		t.Fatalf("old container not restored under its name: %v", cs)
	}
	if now.State != "running" {
		t.Errorf("restored container is %s, want running", now.State)
	}
	if len(cs) != 2 {
		t.Errorf("%d containers after rollback, want 2 (api, alpha)", len(cs))
	}
}

func TestInterruptedRecreateIsRepaired(t *testing.T) {
	t.Parallel()
	l := newLiveLab(t, "alpha", "beta")
	l.applyOK(context.Background())
	l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 5", 1))

	// Cancel the apply right after the old container is set aside and
	// stopped.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, r := l.apply(ctx, reconciler.ApplyOptions{OnStep: func(a *reconciler.Action, s reconciler.Step) {
		if s == reconciler.StepStopped {
			cancel()
		}
	}})
	if len(r.Results) != 1 || r.Results[0].Status != reconciler.StatusInterrupted {
		t.Fatalf("results = %+v, want one interrupted", r.Results)
	}
	cs := l.containers(context.Background())
	if _, ok := cs[l.name+"-alpha"+runtime.AsideSuffix]; !ok {
		t.Fatalf("no container set aside: %v", cs)
	}
	if _, ok := cs[l.name+"-alpha"]; ok {
		t.Fatal("a new alpha exists although the apply stopped before creating it")
	}

	p := l.applyOK(context.Background())
	if got := actionsOf(p); len(got) != 1 || got[0] != "recreate alpha" || p.Actions[0].Reasons[0] != "finish a recreate that was interrupted" {
		t.Fatalf("repair plan = %v %v", got, p.Actions)
	}
	cs = l.containers(context.Background())
	if _, ok := cs[l.name+"-alpha"+runtime.AsideSuffix]; ok {
		t.Error("container set aside is still there")
	}
	if c := cs[l.name+"-alpha"]; c.State != "running" {
		t.Errorf("alpha is %q after repair", c.State)
	}
	if p := l.plan(context.Background()); !p.Empty() {
		t.Errorf("after repair the plan is %v", actionsOf(p))
	}
}

func TestInterruptedRecreateOfUnchangedSpecIsRestored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)
	c := l.containers(ctx)[l.name+"-alpha"]
	// What a crash between "set aside" and "create" leaves, when the
	// revision is then reverted: the old container, stopped, renamed.
	if err := l.rt.StopContainer(ctx, c.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.rt.RenameContainer(ctx, c.ID, l.name+"-alpha"+runtime.AsideSuffix); err != nil {
		t.Fatal(err)
	}
	p := l.applyOK(ctx)
	if got := actionsOf(p); len(got) != 1 || got[0] != "restore alpha" {
		t.Fatalf("plan = %v, want [restore alpha]", got)
	}
	now := l.containers(ctx)[l.name+"-alpha"]
	if now.ID != c.ID || now.State != "running" {
		t.Errorf("alpha = %s %s, want the same container running", now.ID, now.State)
	}
}

func TestMissingImageFailsOnlyItsObject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta")
	l.write("sut/beta.lab.yaml", "image: labsync-test/does-not-exist:never\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	for _, res := range r.Results {
		want := reconciler.StatusOK
		if res.Action.Object == "beta" {
			want = reconciler.StatusFailed
			if !strings.Contains(res.Error, "labsync pulls nothing") && !errors.Is(errors.New(res.Error), runtime.ErrNameInUse) {
				t.Errorf("beta error = %s", res.Error)
			}
		}
		if res.Status != want {
			t.Errorf("%s %s: %s (%s), want %s", res.Action.Kind, res.Action.Object, res.Status, res.Error, want)
		}
	}
	if _, ok := l.containers(ctx)[l.name+"-beta"]; ok {
		t.Error("a failed create left a container behind")
	}
}

// A recreate interrupted after its new container was made: the next apply
// checks the new container and, as it fails, restores the old one.
func TestInterruptedRecreateWithFailingNewContainerIsRolledBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)
	old := l.containers(ctx)[l.name+"-alpha"]

	// What a crash while the new container is watched leaves: the old
	// container set aside, the new one (which fails) created and started
	// under the real name. (One never started is made again instead.)
	l.write("sut/alpha.lab.yaml", "command: [testflinger-agent, -c, /nonexistent.conf]\n")
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := lab.Compile(lb, lab.CompileOptions{})
	var spec *lab.ContainerSpec
	for i := range d.Containers {
		if d.Containers[i].Name == "alpha" {
			spec = &d.Containers[i]
		}
	}
	if err := l.rt.StopContainer(ctx, old.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.rt.RenameContainer(ctx, old.ID, spec.ContainerName+runtime.AsideSuffix); err != nil {
		t.Fatal(err)
	}
	newID, err := l.rt.CreateContainer(ctx, spec, runtime.CreateOptions{Lab: l.name, Revision: "new"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.rt.StartContainer(ctx, newID); err != nil {
		t.Fatal(err)
	}

	p, r := l.apply(ctx, reconciler.ApplyOptions{})
	if got := actionsOf(p); len(got) != 1 || got[0] != "finish-recreate alpha" {
		t.Fatalf("plan = %v", got)
	}
	if r.Results[0].Status != reconciler.StatusRolledBack {
		t.Fatalf("result = %s: %s", r.Results[0].Status, r.Results[0].Error)
	}
	cs := l.containers(ctx)
	if c := cs[l.name+"-alpha"]; c.ID != old.ID || c.State != "running" {
		t.Errorf("alpha = %s %s, want the old container running again", c.ID, c.State)
	}
	if len(cs) != 2 {
		t.Errorf("%d containers, want api and alpha", len(cs))
	}
}
