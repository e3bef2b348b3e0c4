package reconciler_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/reconciler"
)

// agentCmd is labsync-agent around the stand-in, with short periods.
const agentCmd = "command: [labsync-agent, run, --sut, '{name}', --status-interval, 200ms, --stop-timeout, 2s, --restart-min, 100ms, --restart-max, 200ms, --crash-limit, 3, --crash-window, 1m, --, testflinger-agent, -c, '{conf}']\n"

func (l *liveLab) health(ctx context.Context, name string) (status string, restarts int, started string) {
	l.t.Helper()
	info, err := l.rt.API().ContainerInspect(ctx, l.containers(ctx)[l.name+"-"+name].ID)
	if err != nil {
		l.t.Fatal(err)
	}
	if info.State.Health != nil {
		status = info.State.Health.Status
	}
	return status, info.RestartCount, info.State.StartedAt
}

// agentPID finds the host PID of the supervised testflinger-agent.
func (l *liveLab) agentPID(ctx context.Context, name string) int {
	l.t.Helper()
	top, err := l.rt.API().ContainerTop(ctx, l.containers(ctx)[l.name+"-"+name].ID, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	pidCol, cmdCol := -1, -1
	for i, t := range top.Titles {
		switch t {
		case "PID":
			pidCol = i
		case "CMD", "COMMAND":
			cmdCol = i
		}
	}
	for _, p := range top.Processes {
		if strings.HasPrefix(p[cmdCol], "testflinger-agent") {
			var pid int
			for _, c := range p[pidCol] {
				pid = pid*10 + int(c-'0')
			}
			return pid
		}
	}
	return 0
}

func TestAgentContainerIsHealthyAndSurvivesAKilledAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.write("sut/alpha.lab.yaml", agentCmd)
	l.applyOK(ctx)
	status, restarts, started := l.health(ctx, "alpha")
	if status != "healthy" {
		t.Fatalf("health = %q after apply", status)
	}
	pid := l.agentPID(ctx, "alpha")
	if pid == 0 {
		t.Fatal("no testflinger-agent process in the container")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "agent not restarted", func() bool {
		p := l.agentPID(ctx, "alpha")
		return p != 0 && p != pid
	})
	testenv.Eventually(t, 10*time.Second, "container unhealthy after one restart", func() bool {
		s, _, _ := l.health(ctx, "alpha")
		return s == "healthy"
	})
	if _, r, s := l.health(ctx, "alpha"); r != restarts || s != started {
		t.Errorf("the container itself was restarted (%d, %s)", r, s)
	}
}

func TestCrashLoopingAgentTurnsUnhealthy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	// Up long enough to be seen healthy, then crashes over and over.
	l.write("sut/alpha.lab.yaml", agentCmd+"env: {STANDIN_EXIT_AFTER: 2s, STANDIN_EXIT_CODE: \"1\"}\n")
	l.applyOK(ctx)
	testenv.Eventually(t, 60*time.Second, "crash-looping agent never unhealthy", func() bool {
		s, _, _ := l.health(ctx, "alpha")
		return s == "unhealthy"
	})
}

func TestQuietJobKeepsTheContainerHealthy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.write("sut/alpha.lab.yaml", agentCmd+"env: {STANDIN_JOB_EVERY: \"1\", STANDIN_JOB_DURATION: 1h}\n")
	l.applyOK(ctx)
	id := l.containers(ctx)[l.name+"-alpha"].ID
	activity, err := l.rt.AgentActivity(ctx, id)
	if err != nil || !activity.Busy || activity.JobID == "" {
		t.Fatalf("activity = %+v, %v; want busy with a job", activity, err)
	}
	// Several healthcheck periods (1s) with no output from the agent.
	info, _ := l.rt.API().ContainerInspect(ctx, id)
	checks := len(info.State.Health.Log)
	testenv.Eventually(t, 30*time.Second, "fewer than 4 more healthchecks ran", func() bool {
		info, _ := l.rt.API().ContainerInspect(ctx, id)
		if info.State.Health.Status != "healthy" {
			t.Fatalf("unhealthy during a quiet job: %+v", info.State.Health.Log)
		}
		return info.State.Health.FailingStreak == 0 && len(info.State.Health.Log) >= min(checks+4, 5)
	})
}

func TestDockerStopEndsWithinTheTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.write("sut/alpha.lab.yaml", agentCmd+"env: {STANDIN_IGNORE_TERM: \"1\"}\n")
	l.applyOK(ctx)
	id := l.containers(ctx)[l.name+"-alpha"].ID
	start := time.Now()
	if err := l.rt.StopContainer(ctx, id, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	info, _ := l.rt.API().ContainerInspect(ctx, id)
	if took >= 10*time.Second || info.State.ExitCode != 128+int(syscall.SIGKILL) {
		t.Errorf("docker stop took %s (exit %d); want the supervisor to kill the agent after its 2s stop timeout and exit with the agent's status", took, info.State.ExitCode)
	}
	t.Logf("docker stop of an agent ignoring SIGTERM took %s", took.Round(time.Millisecond))
}

// A config change to a busy agent waits for its job to end.
func TestChangeToBusyAgentWaitsForTheJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.write("sut/alpha.lab.yaml", agentCmd+"env: {STANDIN_JOB_EVERY: \"2\", STANDIN_JOB_DURATION: 4s}\n")
	l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 1", 1))
	l.applyOK(ctx)
	id := l.containers(ctx)[l.name+"-alpha"].ID
	testenv.Eventually(t, 10*time.Second, "agent never busy", func() bool {
		a, _ := l.rt.AgentActivity(ctx, id)
		return a.Busy
	})
	l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 2", 1))
	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	if len(r.Results) != 1 || r.Results[0].Status != reconciler.StatusDeferred || !strings.Contains(r.Results[0].Error, "running job") {
		t.Fatalf("results = %+v, want the recreate deferred", r.Results)
	}
	if l.containers(ctx)[l.name+"-alpha"].ID != id {
		t.Fatal("the busy agent was recreated")
	}
	// Once the job ends (4s jobs, then a 1s idle poll) the change goes through.
	testenv.Eventually(t, 30*time.Second, "change never applied after the job", func() bool {
		a, _ := l.rt.AgentActivity(ctx, id)
		if a.Busy {
			return false
		}
		_, r := l.apply(ctx, reconciler.ApplyOptions{})
		return len(r.Results) == 1 && r.Results[0].Status == reconciler.StatusOK
	})
	if l.containers(ctx)[l.name+"-alpha"].ID == id {
		t.Error("alpha was not recreated")
	}
}

// A device moving to a new agent while its old agent runs a job: neither
// the stop nor the new agent happens until the job ends, so two agents
// never drive the device.
func TestDeviceMovesOnlyWhenTheOldAgentIsIdle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLiveLab(t, "alpha")
	l.write("sut/alpha.lab.yaml", agentCmd+"env: {STANDIN_JOB_EVERY: \"2\", STANDIN_JOB_DURATION: 4s}\n")
	l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 1", 1))
	l.write("lab.yaml", strings.Replace(readFile(t, l.dir, "lab.yaml"), "agents:", "prune:\n  enabled: false\nagents:", 1))
	l.applyOK(ctx)
	old := l.containers(ctx)[l.name+"-alpha"]
	testenv.Eventually(t, 10*time.Second, "alpha never busy", func() bool {
		a, _ := l.rt.AgentActivity(ctx, old.ID)
		return a.Busy
	})
	// alpha is disabled; omega takes its device.
	l.write("sut/alpha.lab.yaml", "enabled: false\n")
	l.write("sut/omega.conf", agentConf("omega"))
	l.write("sut/omega_snappy.yaml", "device_ip: 10.250.0.10\n")
	_, r := l.apply(ctx, reconciler.ApplyOptions{})
	statuses := map[string]reconciler.Status{}
	for _, res := range r.Results {
		statuses[string(res.Action.Kind)+" "+res.Action.Object] = res.Status
	}
	if statuses["stop alpha"] != reconciler.StatusDeferred || statuses["create omega"] != reconciler.StatusDeferred {
		t.Fatalf("results = %v, want the stop and the create deferred", statuses)
	}
	if _, ok := l.containers(ctx)[l.name+"-omega"]; ok {
		t.Fatal("omega was created while alpha still drove the device")
	}
	testenv.Eventually(t, 30*time.Second, "device never moved after the job", func() bool {
		a, _ := l.rt.AgentActivity(ctx, old.ID)
		if a.Busy {
			return false
		}
		_, r := l.apply(ctx, reconciler.ApplyOptions{})
		return r.Failed() == 0 && len(r.Deferred()) == 0
	})
	cs := l.containers(ctx)
	if cs[l.name+"-alpha"].State == "running" || cs[l.name+"-omega"].State != "running" {
		t.Errorf("alpha %s, omega %s; want alpha stopped and omega running", cs[l.name+"-alpha"].State, cs[l.name+"-omega"].State)
	}
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
