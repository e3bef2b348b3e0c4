package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labsync/labsync/agent"
	"github.com/labsync/labsync/internal/testenv"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		kind agent.LineKind
		job  string
	}{
		{"2026-11-26 01:08:28,965 INFO: Starting job ac13d962-cb9a-41fd-9ee5-1059599791e4", agent.LineJobStart, "ac13d962-cb9a-41fd-9ee5-1059599791e4"},
		{"INFO: Starting job AC13D962-CB9A-41FD-9EE5-1059599791E4 now", agent.LineJobStart, "ac13d962-cb9a-41fd-9ee5-1059599791e4"},
		{"2026-11-26 INFO: Checking jobs", agent.LineIdle, ""},
		{"INFO: Sleeping for 10", agent.LineIdle, ""},
		{"Starting job", agent.LineOther, ""},
		{"Starting job not-a-uuid", agent.LineOther, ""},
		{"provisioning the device", agent.LineOther, ""},
		{"", agent.LineOther, ""},
	} {
		kind, job := agent.ParseLine(tc.line)
		if kind != tc.kind || job != tc.job {
			t.Errorf("ParseLine(%q) = %v %q, want %v %q", tc.line, kind, job, tc.kind, tc.job)
		}
	}
}

func TestHealthDecision(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	alive := func(pid int) bool { return pid == 42 }
	fresh := agent.Heartbeat{Time: now.Add(-2 * time.Second), Running: true, ChildPID: 42, State: agent.StateIdle}
	with := func(f func(*agent.Heartbeat)) agent.Heartbeat { hb := fresh; f(&hb); return hb }
	for _, tc := range []struct {
		name   string
		hb     agent.Heartbeat
		err    error
		ok     bool
		reason string
	}{
		{"idle", fresh, nil, true, "ok: agent idle"},
		{"quiet job", with(func(h *agent.Heartbeat) { h.State, h.JobID = agent.StateBusy, "j1" }), nil, true, "ok: agent busy with job j1"},
		{"no file", agent.Heartbeat{}, os.ErrNotExist, false, "no heartbeat file"},
		{"unreadable", agent.Heartbeat{}, errors.New("bad json"), false, "heartbeat unreadable"},
		{"stale", with(func(h *agent.Heartbeat) { h.Time = now.Add(-time.Minute) }), nil, false, "heartbeat stale"},
		{"dead agent", with(func(h *agent.Heartbeat) { h.ChildPID = 7 }), nil, false, "agent process 7 is not running"},
		{"not running", with(func(h *agent.Heartbeat) { h.Running = false }), nil, false, "is not running"},
		{"restarting once", with(func(h *agent.Heartbeat) {
			h.State, h.Running, h.LastExit, h.Restarts = agent.StateRestarting, false, "exited with code 1", 1
		}), nil, true, "ok: agent restarting"},
		{"crash loop", with(func(h *agent.Heartbeat) {
			h.State, h.CrashLoop, h.RecentCrashes, h.LastExit = agent.StateRestarting, true, 5, "exited with code 1"
		}), nil, false, "crash-looping: 5 crashes"},
		{"offline", with(func(h *agent.Heartbeat) { h.Offline = true }), nil, false, "marked offline"},
	} {
		ok, reason := agent.Decide(tc.hb, tc.err, now, 15*time.Second, alive)
		if ok != tc.ok || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: %v %q, want %v containing %q", tc.name, ok, reason, tc.ok, tc.reason)
		}
	}
}

func TestRotatingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	r := &agent.RotatingFile{Path: path, MaxSize: 100, Keep: 2}
	line := strings.Repeat("x", 39) + "\n" // 40 bytes
	for i := 0; i < 10; i++ {
		if _, err := r.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	for _, f := range []string{path, path + ".1", path + ".2"} {
		info, err := os.Stat(f)
		if err != nil || info.Size() > 100 || info.Size() == 0 {
			t.Errorf("%s: %v %v", f, info, err)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("more than Keep rotated files")
	}
}

type proc struct {
	t     *testing.T
	dir   string
	out   *testenv.SyncBuffer
	sigs  chan os.Signal
	done  chan struct{}
	code  int
	err   error
	start time.Time
}

// supervise runs the supervisor on the stand-in agent with env.
func supervise(t *testing.T, env []string, tune func(*agent.Config)) *proc {
	t.Helper()
	bin := testenv.StandinBinary(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "dut.conf")
	testenv.WriteFiles(t, dir, map[string]string{"dut.conf": "agent_id: dut\nserver_address: x\njob_queues: [dut]\npolling_interval: 1\n"})
	p := &proc{t: t, dir: dir, out: &testenv.SyncBuffer{}, sigs: make(chan os.Signal, 4), done: make(chan struct{}), start: time.Now()}
	cfg := agent.Config{
		SUT: "dut", Command: []string{bin, "-c", conf}, Env: env, Stdout: p.out,
		LogFile: filepath.Join(dir, "log", "agent.log"), StateDir: filepath.Join(dir, "state"), MarkerDir: dir,
		StatusInterval: 100 * time.Millisecond, RestartMin: 20 * time.Millisecond, RestartMax: 100 * time.Millisecond,
		StopTimeout: 2 * time.Second, Signals: p.sigs,
	}
	if tune != nil {
		tune(&cfg)
	}
	go func() {
		defer close(p.done)
		p.code, p.err = agent.Run(context.Background(), cfg)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.sigs <- syscall.SIGTERM
			<-p.done
		}
	})
	return p
}

func (p *proc) heartbeat() agent.Heartbeat {
	hb, _ := agent.ReadHeartbeat(filepath.Join(p.dir, "state", agent.HeartbeatFile))
	return hb
}

func (p *proc) health() (bool, string) {
	return agent.Healthcheck(filepath.Join(p.dir, "state"), 0)
}

func (p *proc) waitOutput(s string) {
	p.t.Helper()
	testenv.Eventually(p.t, 10*time.Second, "output never had "+s+":\n"+p.out.String(), func() bool { return strings.Contains(p.out.String(), s) })
}

func (p *proc) stop() time.Duration {
	p.t.Helper()
	start := time.Now()
	p.sigs <- syscall.SIGTERM
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.t.Fatal("supervisor did not stop")
	}
	return time.Since(start)
}

func TestSupervisorFansOutAndTracksJobs(t *testing.T) {
	p := supervise(t, []string{"STANDIN_JOB_EVERY=2", "STANDIN_JOB_DURATION=1s"}, nil)
	p.waitOutput("Starting job ")
	testenv.Eventually(t, 5*time.Second, "state never busy", func() bool { return p.heartbeat().State == agent.StateBusy && p.heartbeat().JobID != "" })
	if ok, reason := p.health(); !ok {
		t.Errorf("unhealthy during a job: %s", reason)
	}
	p.waitOutput("finished")
	testenv.Eventually(t, 5*time.Second, "state never idle after the job", func() bool { return p.heartbeat().State == agent.StateIdle })
	p.sigs <- syscall.SIGHUP
	p.waitOutput("Received hangup")
	p.sigs <- syscall.SIGUSR1
	p.waitOutput("Received user defined signal 1")
	p.stop()
	if p.code != 0 || p.err != nil {
		t.Errorf("exit %d, %v", p.code, p.err)
	}
	log, _ := os.ReadFile(filepath.Join(p.dir, "log", "agent.log"))
	if !strings.Contains(string(log), "Starting job ") || !strings.Contains(string(log), "Checking jobs") {
		t.Errorf("log file lacks the agent's lines:\n%s", log)
	}
}

// A quiet job much longer than the heartbeat period stays healthy: health
// comes from the supervisor, not from the agent's chatter.
func TestQuietJobStaysHealthy(t *testing.T) {
	p := supervise(t, []string{"STANDIN_JOB_EVERY=1", "STANDIN_JOB_DURATION=1h"}, nil)
	p.waitOutput("Starting job ")
	quietSince := time.Now()
	lines := strings.Count(p.out.String(), "\n")
	// Ten status periods of silence.
	for time.Since(quietSince) < time.Second {
		if ok, reason := p.health(); !ok {
			t.Fatalf("unhealthy %s into a quiet job: %s", time.Since(quietSince), reason)
		}
		testenv.Eventually(t, time.Second, "heartbeat not rewritten", func() bool { return time.Since(p.heartbeat().Time) < 150*time.Millisecond })
	}
	if n := strings.Count(p.out.String(), "\n"); n != lines {
		t.Fatalf("the job was not quiet: %d new lines", n-lines)
	}
}

func TestCrashedAgentIsRestartedThenCrashLoops(t *testing.T) {
	p := supervise(t, []string{"STANDIN_EXIT_AFTER=150ms", "STANDIN_EXIT_CODE=3"}, func(c *agent.Config) { c.CrashLimit, c.CrashWindow = 4, time.Minute })
	p.waitOutput("exited with code 3; restarting")
	testenv.Eventually(t, 10*time.Second, "never crash-looping", func() bool { return p.heartbeat().CrashLoop })
	ok, reason := p.health()
	if ok || !strings.Contains(reason, "crash-looping") {
		t.Errorf("health = %v %q", ok, reason)
	}
	if hb := p.heartbeat(); hb.Restarts < 4 || hb.LastExit != "exited with code 3" {
		t.Errorf("heartbeat = %+v", hb)
	}
}

func TestRestartMarkerIsNotACrash(t *testing.T) {
	p := supervise(t, []string{"STANDIN_EXIT_AFTER=300ms", "STANDIN_EXIT_CODE=0"}, nil)
	marker := filepath.Join(p.dir, "TESTFLINGER-DEVICE-RESTART-dut")
	testenv.WriteFiles(t, p.dir, map[string]string{"TESTFLINGER-DEVICE-RESTART-dut": ""})
	testenv.Eventually(t, 10*time.Second, "agent not restarted on request", func() bool {
		return strings.Count(p.out.String(), "Starting testflinger-agent stand-in") >= 2
	})
	if _, err := os.Stat(marker); err == nil {
		t.Error("restart marker left in place")
	}
	if hb := p.heartbeat(); hb.Restarts != 0 {
		t.Errorf("a requested restart counted as a crash: %+v", hb)
	}
	testenv.WriteFiles(t, p.dir, map[string]string{"TESTFLINGER-DEVICE-OFFLINE-dut": ""})
	testenv.Eventually(t, 5*time.Second, "offline marker not seen", func() bool { return p.heartbeat().Offline })
	if ok, reason := p.health(); ok || !strings.Contains(reason, "offline") {
		t.Errorf("health with the device offline = %v %q", ok, reason)
	}
}

func TestAgentIgnoringSIGTERMIsKilledInTime(t *testing.T) {
	p := supervise(t, []string{"STANDIN_IGNORE_TERM=1"}, func(c *agent.Config) { c.StopTimeout = 500 * time.Millisecond })
	p.waitOutput("Sleeping for")
	took := p.stop()
	if took > 3*time.Second {
		t.Errorf("stop took %s with a 500ms stop timeout", took)
	}
	if p.code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d (killed)", p.code, 128+int(syscall.SIGKILL))
	}
	if !strings.Contains(p.out.String(), "did not stop within 500ms; killing it") {
		t.Errorf("no note of the kill in the output")
	}
}

func TestUnreachableBrokerDoesNotStopTheAgent(t *testing.T) {
	p := supervise(t, nil, func(c *agent.Config) { c.MQTT.Broker = "tcp://127.0.0.1:1" })
	p.waitOutput("Sleeping for")
	n := strings.Count(p.out.String(), "Checking jobs")
	testenv.Eventually(t, 5*time.Second, "output stopped flowing", func() bool { return strings.Count(p.out.String(), "Checking jobs") > n })
	if ok, reason := p.health(); !ok {
		t.Errorf("unhealthy without a broker: %s", reason)
	}
}

func TestMain(m *testing.M) { testenv.Main(m) }

// A process the agent left behind neither keeps the agent from being
// restarted nor survives it.
func TestLeftoverProcessIsEndedAndAgentRestarted(t *testing.T) {
	dir := t.TempDir()
	sh := filepath.Join(dir, "agent.sh")
	testenv.WriteFiles(t, dir, map[string]string{"agent.sh": "echo started\nsleep 300 &\necho $! > " + filepath.Join(dir, "child.pid") + "\nexit 3\n"})
	out := &testenv.SyncBuffer{}
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Run(context.Background(), agent.Config{SUT: "dut", Command: []string{"/bin/sh", sh}, Stdout: out, StateDir: filepath.Join(dir, "state"), MarkerDir: dir,
			StatusInterval: 100 * time.Millisecond, RestartMin: 50 * time.Millisecond, RestartMax: 100 * time.Millisecond, CrashLimit: 100, Signals: sigs})
	}()
	defer func() { sigs <- syscall.SIGTERM; <-done }()
	testenv.Eventually(t, 15*time.Second, "agent not restarted while its child held the output:\n"+out.String(), func() bool {
		return strings.Count(out.String(), "started") >= 2
	})
	data, _ := os.ReadFile(filepath.Join(dir, "child.pid"))
	var pid int
	fmt.Sscan(string(data), &pid)
	testenv.Eventually(t, 10*time.Second, "left-over process still alive", func() bool { return pid > 0 && !agent.ProcessAlive(pid) })
}

// Crash-looping ends once the crashes fall out of the window.
func TestCrashLoopClearsAfterTheWindow(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	script := fmt.Sprintf("n=$(cat %[1]s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]s; echo run $n; [ $n -le 3 ] && exit 1; exec sleep 300\n", count)
	testenv.WriteFiles(t, dir, map[string]string{"agent.sh": script})
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	state := filepath.Join(dir, "state")
	go func() {
		defer close(done)
		agent.Run(context.Background(), agent.Config{SUT: "dut", Command: []string{"/bin/sh", filepath.Join(dir, "agent.sh")}, Stdout: &testenv.SyncBuffer{}, StateDir: state, MarkerDir: dir,
			StatusInterval: 100 * time.Millisecond, RestartMin: 20 * time.Millisecond, RestartMax: 40 * time.Millisecond, CrashLimit: 3, CrashWindow: 1500 * time.Millisecond, Signals: sigs})
	}()
	defer func() { sigs <- syscall.SIGTERM; <-done }()
	hb := func() agent.Heartbeat {
		h, _ := agent.ReadHeartbeat(filepath.Join(state, agent.HeartbeatFile))
		return h
	}
	testenv.Eventually(t, 10*time.Second, "never crash-looping", func() bool { return hb().CrashLoop })
	testenv.Eventually(t, 10*time.Second, "crash loop never cleared once the agent ran", func() bool { return !hb().CrashLoop && hb().Running })
	if ok, reason := agent.Healthcheck(state, 0); !ok {
		t.Errorf("unhealthy after recovering: %s", reason)
	}
}
