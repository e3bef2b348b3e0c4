package reconciler_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// restartPolicy returns the restart policy of container id.
func (l *liveLab) restartPolicy(ctx context.Context, id string) string {
	info, err := l.rt.API().ContainerInspect(ctx, id)
	if err != nil {
		return "inspect: " + err.Error()
	}
	if p := string(info.HostConfig.RestartPolicy.Name); p != "" {
		return p
	}
	return "no"
}

// Every container labsync stops to keep it stopped or set it aside (a
// recreate's old one, an orphan removed, an agent whose device moved) has
// restart policy "no" by then: a daemon restart right after the stop must
// not bring it back next to the agent that replaces it.
func TestStoppedContainersHaveRestartPolicyNo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha", "beta", "gamma", "eps")
	l.applyOK(ctx)

	l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 9", 1))
	l.remove("sut/gamma.conf")
	l.remove("sut/gamma_snappy.yaml")
	// beta's device goes to delta.
	l.remove("sut/beta.conf")
	l.remove("sut/beta_snappy.yaml")
	l.write("sut/delta.conf", agentConf("delta"))
	l.write("sut/delta_snappy.yaml", "device_ip: "+devY+"\n")

	var mu sync.Mutex
	var bad []string
	stopped := map[string]bool{}
	p, r := l.apply(ctx, reconciler.ApplyOptions{OnStep: func(a *reconciler.Action, s reconciler.Step) {
		if s != reconciler.StepStopped || a.Old == nil {
			return
		}
		policy := l.restartPolicy(ctx, a.Old.ID)
		mu.Lock()
		defer mu.Unlock()
		stopped[string(a.Kind)+" "+a.Object] = true
		if policy != "no" {
			bad = append(bad, fmt.Sprintf("%s %s: stopped with restart policy %s", a.Kind, a.Object, policy))
		}
	}})
	for _, res := range r.Results {
		if res.Status != reconciler.StatusOK {
			t.Fatalf("%s %s: %s: %s", res.Action.Kind, res.Action.Object, res.Status, res.Error)
		}
	}
	for _, want := range []string{"recreate alpha", "remove gamma", "stop beta"} {
		if !stopped[want] {
			t.Errorf("no %s among the stops (plan %v)", want, actionsOf(p))
		}
	}
	for _, b := range bad {
		t.Error(b)
	}
}

// orphan makes a container of this lab for an agent the lab does not
// declare, driving device, with restart policy always, started: paused,
// or restarting (its command exits at once).
func (l *liveLab) orphan(ctx context.Context, name, device, state string) string {
	l.t.Helper()
	spec := *l.spec("alpha")
	spec.Name, spec.ContainerName, spec.Device = name, l.name+"-"+name, device
	cmd := []string{"testflinger-server", "--listen", ":8000"}
	if state == "restarting" {
		cmd = []string{"testflinger-agent", "-c", "/nonexistent.conf"}
	}
	api := l.rt.API()
	resp, err := api.ContainerCreate(ctx, &container.Config{Image: l.image, Cmd: cmd, Labels: runtime.ManagedLabels(&spec, l.name, "old")},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyAlways}}, nil, nil, spec.ContainerName)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := api.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		l.t.Fatal(err)
	}
	switch state {
	case "paused":
		if err := api.ContainerPause(ctx, resp.ID); err != nil {
			l.t.Fatal(err)
		}
	case "restarting":
		testenv.Eventually(l.t, 20*time.Second, name+" never restarting", func() bool {
			info, err := api.ContainerInspect(ctx, resp.ID)
			return err == nil && info.State.Restarting && info.RestartCount >= 2
		})
	}
	return resp.ID
}

// Orphan agents that are paused or restarting, on the devices of declared
// agents, are stopped for good and removed.
func TestPausedAndRestartingOrphans(t *testing.T) {
	t.Parallel()
	for _, prune := range []bool{true, false} {
		t.Run(fmt.Sprintf("prune=%v", prune), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := newLiveLab(t, "alpha", "beta")
			if !prune {
				l.write("lab.yaml", strings.Replace(l.read("lab.yaml"), "agents:\n", "prune:\n  enabled: false\nagents:\n", 1))
			}
			l.applyOK(ctx)
			ids := map[string]string{
				"zeta": l.orphan(ctx, "zeta", devX, "paused"),
				"eta":  l.orphan(ctx, "eta", devY, "restarting"),
			}
			p := l.applyOK(ctx)
			want := []string{"stop eta", "stop zeta"}
			if prune {
				want = append(want, "remove eta", "remove zeta")
			}
			if got := actionsOf(p); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("plan = %v, want %v", got, want)
			}
			for name, id := range ids {
				info, err := l.rt.API().ContainerInspect(ctx, id)
				switch {
				case prune && err == nil:
					t.Errorf("%s not removed: %s", name, info.State.Status)
				case !prune && err != nil:
					t.Errorf("%s: %v", name, err)
				case !prune && (info.State.Status != "exited" || info.HostConfig.RestartPolicy.Name != "no"):
					t.Errorf("%s is %s with restart policy %q, want exited with no", name, info.State.Status, info.HostConfig.RestartPolicy.Name)
				}
			}
		})
	}
}

// A rollback counts only when the old container runs again as it did:
// healthy, as it has a healthcheck. Here it comes back with its device
// marked offline, so it is unhealthy: the recreate failed, it was not
// rolled back.
func TestRollbackWaitsForTheOldContainersHealth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)

	l.write("sut/alpha.lab.yaml", "command: [testflinger-agent, -c, /nonexistent.conf]\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{OnStep: func(a *reconciler.Action, s reconciler.Step) {
		if s != reconciler.StepStopped {
			return
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: "tmp/TESTFLINGER-DEVICE-OFFLINE-alpha", Mode: 0o644})
		_ = tw.Close()
		if err := l.rt.API().CopyToContainer(ctx, a.Old.ID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
			t.Errorf("mark the device offline: %v", err)
		}
	}})
	if len(r.Results) != 1 {
		t.Fatalf("results = %+v", r.Results)
	}
	if res := r.Results[0]; res.Status != reconciler.StatusFailed || !strings.Contains(res.Error, "unhealthy") {
		t.Errorf("result = %s: %s; want failed, the old container unhealthy", res.Status, res.Error)
	}
}

func (l *liveLab) read(name string) string {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir, name))
	if err != nil {
		l.t.Fatal(err)
	}
	return string(b)
}

// A declared agent paused by hand is resumed, not started (the engine
// refuses to start a paused container): the next apply converges.
func TestPausedAgentIsResumed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.applyOK(ctx)
	id := l.containers(ctx)[l.name+"-alpha"].ID
	if err := l.rt.API().ContainerPause(ctx, id); err != nil {
		t.Fatal(err)
	}
	p := l.applyOK(ctx)
	if got := actionsOf(p); len(got) != 1 || got[0] != "start alpha" {
		t.Fatalf("plan %v, want start alpha", got)
	}
	if c := l.containers(ctx)[l.name+"-alpha"]; c.ID != id || c.State != "running" {
		t.Fatalf("alpha is %s %s, want %s running", c.ID, c.State, id)
	}
}
