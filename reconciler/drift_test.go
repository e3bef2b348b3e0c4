package reconciler_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// driftSecret is the value of the agents' secret: it must never appear in
// a reason.
const driftSecret = "s3cr3t-value-never-shown"

// newDriftLab is a lab with what the deep drift check compares: agents
// with env, a secret, a memory limit and the stack's network, under
// labsync-agent from its volume and the embedded broker's socket; and a
// service with two networks and aliases, a named volume, runtime-data folders (one read-only),
// a healthcheck, env, labels, a published port and a restart policy.
func newDriftLab(t *testing.T, agents ...string) *driftLab {
	t.Helper()
	l := &driftLab{liveLab: newLiveLab(t, agents...), dataRoot: t.TempDir()}
	l.opts = reconciler.ApplyOptions{AgentBinary: testenv.AgentBinary(t), AgentMQTTDir: t.TempDir()}
	l.secrets = t.TempDir()
	if err := os.WriteFile(filepath.Join(l.secrets, "tf-token"), []byte(driftSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(runtime.Options{Secrets: runtime.DirSecrets{Dir: l.secrets}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	l.rt = rt
	l.write("lab.yaml", fmt.Sprintf(`name: %[1]s
container_prefix: %[1]s-
agents:
  image:
    name: %[2]s
  env:
    TF_LOG: debug
  secrets:
    TF_TOKEN: tf-token
  memory: 256m
  networks:
    lab: {}
  healthcheck:
    test: [CMD, labsync-agent, healthcheck]
    interval: 1s
    timeout: 5s
    retries: 2
  update:
    min_uptime: 300ms
    start_timeout: 30s
`, l.name, l.image))
	l.write("docker-compose.yaml", fmt.Sprintf(`services:
  api:
    image: %s
    command: ["testflinger-server", "--listen", ":8000"]
    environment:
      API_MODE: lab
      API_WORKERS: "2"
    labels:
      io.example.team: lab
    restart: unless-stopped
    mem_limit: 128m
    ports: ["8000"]
    healthcheck:
      test: ["CMD", "testflinger-server", "check", "http://localhost:8000/v1"]
      interval: 1s
      timeout: 5s
      retries: 5
    volumes:
      - data:/data
      - ./logs:/var/log/api
      - ./spool:/spool:ro
    networks:
      lab:
        aliases: [testflinger]
      backend: {}
networks:
  lab: {}
  backend: {}
volumes:
  data: {}
`, l.image))
	return l
}

// driftLab is a liveLab whose runtime data goes to a folder of the test.
type driftLab struct {
	*liveLab
	dataRoot string
	secrets  string
	opts     reconciler.ApplyOptions
}

// desired loads and compiles the lab as it is now.
func (l *driftLab) desired() *lab.Desired {
	l.t.Helper()
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{DefaultName: l.name, DataRoot: l.dataRoot})
	if err != nil {
		l.t.Fatalf("load: %v", err)
	}
	return lab.Compile(lb, lab.CompileOptions{})
}

// plan observes the host and plans without the deep check, as most passes do.
func (l *driftLab) plan(ctx context.Context) *reconciler.Changeset {
	l.t.Helper()
	obs, err := l.rt.Observe(ctx, l.name)
	if err != nil {
		l.t.Fatalf("observe: %v", err)
	}
	return reconciler.Plan(l.desired(), obs, reconciler.PlanOptions{})
}

// deepPlan observes the host, runs the deep drift check and plans with it.
func (l *driftLab) deepPlan(ctx context.Context) (*reconciler.Changeset, map[string]reconciler.Drift) {
	l.t.Helper()
	d := l.desired()
	obs, err := l.rt.Observe(ctx, l.name)
	if err != nil {
		l.t.Fatalf("observe: %v", err)
	}
	drift, err := reconciler.DeepDrift(ctx, l.rt, d, obs)
	if err != nil {
		l.t.Fatalf("deep drift: %v", err)
	}
	return reconciler.Plan(d, obs, reconciler.PlanOptions{Drift: drift}), drift
}

func (l *driftLab) applyPlan(ctx context.Context, p *reconciler.Changeset) {
	l.t.Helper()
	opts := l.opts
	opts.StopTimeout = 2 * time.Second
	for _, res := range reconciler.Apply(ctx, l.rt, p, opts).Results {
		if res.Status != reconciler.StatusOK {
			l.t.Fatalf("%s %s: %s: %s", res.Action.Kind, res.Action.Object, res.Status, res.Error)
		}
	}
}

// converge applies the lab and checks that nothing is left to do.
func (l *driftLab) converge(ctx context.Context) {
	l.t.Helper()
	l.applyPlan(ctx, l.plan(ctx))
	if p := l.plan(ctx); !p.Empty() {
		l.t.Fatalf("after apply the plan is %v", actionsOf(p))
	}
}

func (l *driftLab) inspect(ctx context.Context, name string) container.InspectResponse {
	l.t.Helper()
	info, err := l.rt.API().ContainerInspect(ctx, l.name+"-"+name)
	if err != nil {
		l.t.Fatal(err)
	}
	return info
}

func TestDeepDriftFreshLabHasNone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("plain", func(t *testing.T) {
		// The lab of the apply tests: agents on the default network, no
		// labsync-agent volume, no broker socket.
		t.Parallel()
		l := &driftLab{liveLab: newLiveLab(t, "alpha"), dataRoot: t.TempDir()}
		l.converge(ctx)
		if p, drift := l.deepPlan(ctx); len(drift) != 0 || !p.Empty() {
			t.Fatalf("a freshly applied lab has drift %v, plan %v", drift, actionsOf(p))
		}
	})
	t.Run("full", func(t *testing.T) {
		t.Parallel()
		l := newDriftLab(t, "alpha", "beta")
		l.converge(ctx)

		// The lab uses what the check must not mistake for drift.
		alpha, api := l.inspect(ctx, "alpha"), l.inspect(ctx, "api")
		mounted := func(info container.InspectResponse, dst string) bool {
			return slices.ContainsFunc(info.Mounts, func(m container.MountPoint) bool { return m.Destination == dst })
		}
		if !mounted(alpha, lab.AgentBinDir) || !mounted(alpha, runtime.AgentMQTTMount) ||
			!slices.ContainsFunc(alpha.Config.Env, func(e string) bool { return strings.HasPrefix(e, "LABSYNC_AGENT_MQTT=") }) {
			t.Fatalf("alpha lacks what is added at create: mounts %v, env keys %v", alpha.Mounts, envKeys(alpha.Config.Env))
		}
		if !mounted(api, "/data") || !mounted(api, "/var/log/api") || !mounted(api, "/spool") || len(api.NetworkSettings.Networks) != 2 {
			t.Fatalf("api lacks its mounts or networks: %v, %v", api.Mounts, api.NetworkSettings.Networks)
		}

		if p, drift := l.deepPlan(ctx); len(drift) != 0 || !p.Empty() {
			t.Fatalf("a freshly applied lab has drift %v, plan %v", drift, actionsOf(p))
		}
		// Made again by hand exactly as it was: nothing differs.
		l.recreateByHand(ctx, "beta", func(*container.Config) {})
		// Stopped is not drift either: the plan starts it.
		if err := l.rt.StopContainer(ctx, alpha.ID, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, drift := l.deepPlan(ctx); len(drift) != 0 {
			t.Fatalf("drift %v", drift)
		}
		// A secret that cannot be read now is compared by presence only.
		if err := os.Remove(filepath.Join(l.secrets, "tf-token")); err != nil {
			t.Fatal(err)
		}
		if _, drift := l.deepPlan(ctx); len(drift) != 0 {
			t.Fatalf("without its secret: drift %v", drift)
		}
	})
}

func TestDeepDriftFindsHandChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newDriftLab(t, "alpha", "beta", "gamma")
	l.converge(ctx)
	api := l.rt.API()

	// (a) docker update --restart no
	if _, err := api.ContainerUpdate(ctx, l.name+"-alpha", container.UpdateConfig{RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled}}); err != nil {
		t.Fatal(err)
	}
	// (b) docker network disconnect
	if err := api.NetworkDisconnect(ctx, l.name+"_backend", l.name+"-api", false); err != nil {
		t.Fatal(err)
	}
	// (c) made again by hand with the same labels and another env, as
	// Portainer's "duplicate/edit" does.
	l.recreateByHand(ctx, "beta", func(cfg *container.Config) {
		cfg.Env = slices.DeleteFunc(cfg.Env, func(e string) bool { return strings.HasPrefix(e, "TF_LOG=") })
		cfg.Env = append(cfg.Env, "TF_LOG=trace", "EXTRA=1")
		for i, e := range cfg.Env {
			if strings.HasPrefix(e, "TF_TOKEN=") {
				cfg.Env[i] = "TF_TOKEN=another-" + driftSecret
			}
		}
	})
	// (d) docker update --memory
	if _, err := api.ContainerUpdate(ctx, l.name+"-gamma", container.UpdateConfig{Resources: container.Resources{Memory: 512 << 20, MemorySwap: -1}}); err != nil {
		t.Fatal(err)
	}

	p, drift := l.deepPlan(ctx)
	want := map[string][]string{
		"agent/alpha": {"drift: restart policy changed by hand (always -> no)"},
		"service/api": {"drift: networks changed by hand (" + l.name + "_backend disconnected)"},
		"agent/beta":  {"drift: env changed by hand (TF_LOG changed, TF_TOKEN changed, EXTRA added)"},
		"agent/gamma": {"drift: memory limit changed by hand (256MiB -> 512MiB)"},
	}
	for key, reasons := range want {
		if !slices.Equal(drift[key].Reasons, reasons) {
			t.Errorf("drift of %s = %q, want %q", key, drift[key].Reasons, reasons)
		}
	}
	if len(drift) != len(want) {
		t.Errorf("drift = %q, want only %v", drift, want)
	}
	if s := fmt.Sprint(drift); strings.Contains(s, driftSecret) {
		t.Errorf("a secret value is in the drift: %s", s)
	}
	got := map[string][]string{}
	for _, a := range p.Actions {
		if a.Kind != reconciler.Recreate {
			t.Errorf("planned %s %s: %v", a.Kind, a.Object, a.Reasons)
		}
		got[a.ObjectKind+"/"+a.Object] = a.Reasons
	}
	for key, reasons := range want {
		if !slices.Equal(got[key], reasons) {
			t.Errorf("recreate %s with %q, want %q", key, got[key], reasons)
		}
	}

	// Apply recreates them, and the drift is gone.
	l.applyPlan(ctx, p)
	if p, drift := l.deepPlan(ctx); len(drift) != 0 || !p.Empty() {
		t.Fatalf("after the recreate: drift %v, plan %v", drift, actionsOf(p))
	}
	// The drift found before holds for the old containers only: passes
	// that plan with it until the next check recreate nothing again.
	obs, err := l.rt.Observe(ctx, l.name)
	if err != nil {
		t.Fatal(err)
	}
	if p := reconciler.Plan(l.desired(), obs, reconciler.PlanOptions{Drift: drift}); !p.Empty() {
		t.Errorf("the last check's drift plans %v after the recreate", actionsOf(p))
	}
	if n := l.inspect(ctx, "api").NetworkSettings.Networks; n[l.name+"_backend"] == nil {
		t.Errorf("api is not back on %s_backend: %v", l.name, n)
	}
}

// recreateByHand removes the container of name and creates it again from
// its own inspect, labels and all, after edit: what a hand edit in a UI
// does.
func (l *driftLab) recreateByHand(ctx context.Context, name string, edit func(*container.Config)) {
	l.t.Helper()
	api := l.rt.API()
	info := l.inspect(ctx, name)
	if err := api.ContainerRemove(ctx, info.ID, container.RemoveOptions{Force: true}); err != nil {
		l.t.Fatal(err)
	}
	cfg := info.Config
	edit(cfg)
	host := info.HostConfig
	endpoint := func(ep *network.EndpointSettings) *network.EndpointSettings {
		return &network.EndpointSettings{Aliases: slices.DeleteFunc(slices.Clone(ep.Aliases), func(a string) bool { return a == info.ID[:12] }), IPAMConfig: ep.IPAMConfig}
	}
	var nets []string
	for n := range info.NetworkSettings.Networks {
		nets = append(nets, n)
	}
	slices.Sort(nets)
	// Engines before API 1.44 take one network at create.
	first := map[string]*network.EndpointSettings{nets[0]: endpoint(info.NetworkSettings.Networks[nets[0]])}
	resp, err := api.ContainerCreate(ctx, cfg, host, &network.NetworkingConfig{EndpointsConfig: first}, nil, strings.TrimPrefix(info.Name, "/"))
	if err != nil {
		l.t.Fatal(err)
	}
	for _, n := range nets[1:] {
		if err := api.NetworkConnect(ctx, n, resp.ID, endpoint(info.NetworkSettings.Networks[n])); err != nil {
			l.t.Fatal(err)
		}
	}
	if err := api.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		l.t.Fatal(err)
	}
}

func TestPlanRecreatesOnDrift(t *testing.T) {
	d := compile(t, planLab("alpha", "beta"))
	drift := map[string]reconciler.Drift{
		"agent/alpha": {Container: "id-alpha", Reasons: []string{"drift: restart policy changed by hand (always -> no)"}},
		"agent/beta":  {Container: "id-beta", Reasons: []string{"drift: memory limit changed by hand (none -> 1GiB)"}},
		// Found in a container since replaced: not this one's.
		"service/redis": {Container: "id-redis-before", Reasons: []string{"drift: env changed by hand (X added)"}},
	}
	obs := observedFrom(d)
	// beta's spec changed as well: that reason is the one given.
	for i := range obs.Containers {
		if obs.Containers[i].Object == "beta" {
			obs.Containers[i].Hash = "old"
			obs.Containers[i].Fields = maps.Clone(obs.Containers[i].Fields)
			obs.Containers[i].Fields["memory"] = "x"
		}
	}
	p := reconciler.Plan(d, obs, reconciler.PlanOptions{Drift: drift})
	got := map[string]string{}
	for _, a := range p.Actions {
		got[string(a.Kind)+" "+a.Object] = strings.Join(a.Reasons, "; ")
	}
	want := map[string]string{
		"recreate alpha": "drift: restart policy changed by hand (always -> no)",
		"recreate beta":  "memory changed",
	}
	if !maps.Equal(got, want) {
		t.Errorf("plan = %q, want %q", got, want)
	}
	if p := reconciler.Plan(d, observedFrom(d), reconciler.PlanOptions{}); !p.Empty() {
		t.Errorf("without drift the plan is %v", actionsOf(p))
	}
}

// The deep check costs inspects; a pass without it makes none.
func TestDeepDriftOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newDriftLab(t, "alpha")
	l.converge(ctx)

	// Observing alone: its list calls.
	r0, _ := l.rt.Calls()
	if _, err := l.rt.Observe(ctx, l.name); err != nil {
		t.Fatal(err)
	}
	r1, _ := l.rt.Calls()
	observeCalls := r1 - r0

	// A no-op pass without the deep check: observe, plan, apply nothing.
	r0, w0 := l.rt.Calls()
	if p := l.plan(ctx); !p.Empty() {
		t.Fatalf("plan %v", actionsOf(p))
	}
	if r, w := l.rt.Calls(); r-r0 != observeCalls || w != w0 {
		t.Errorf("a pass without the deep check made %d reads (observing makes %d) and %d writes", r-r0, observeCalls, w-w0)
	}

	// With it: one inspect per container and one per image on top.
	r0, _ = l.rt.Calls()
	if _, drift := l.deepPlan(ctx); len(drift) != 0 {
		t.Fatalf("drift %v", drift)
	}
	if r, _ := l.rt.Calls(); r-r0 != observeCalls+2+1 {
		t.Errorf("the deep check of 2 containers of 1 image made %d reads besides observing, want 3", r-r0-observeCalls)
	}
}

func envKeys(env []string) []string {
	var out []string
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		out = append(out, k)
	}
	return out
}
