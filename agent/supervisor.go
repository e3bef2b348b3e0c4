package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/labsync/labsync/internal/redact"
)

// Config configures a supervisor.
type Config struct {
	// SUT names the device; it prefixes the MQTT topics.
	SUT string
	// AgentID is testflinger-agent's agent_id, used in its marker file
	// names (default: SUT).
	AgentID string
	// Command is the agent's command line.
	Command []string
	// Env is added to the agent's environment: labsync-agent's own, less
	// its settings (LABSYNC_AGENT_* and LABSYNC_SUT).
	Env []string
	// Secrets are values hidden (as ***) in every output line, besides the
	// shapes internal/redact finds; values shorter than 4 characters are
	// ignored.
	Secrets []string
	// Stdout receives every output line (default os.Stdout).
	Stdout io.Writer
	// LogFile, when set, also receives every line; it rotates at
	// LogMaxSize, keeping LogKeep old files.
	LogFile    string
	LogMaxSize int64
	LogKeep    int
	MQTT       MQTTOptions
	// Heartbeat is the period of "ok" on <sut>/agent.
	Heartbeat time.Duration
	// StateDir holds the heartbeat file, rewritten every StatusInterval.
	StateDir       string
	StatusInterval time.Duration
	// MarkerDir is where testflinger-agent puts its
	// TESTFLINGER-DEVICE-OFFLINE-<id> and -RESTART-<id> markers.
	MarkerDir string
	// RestartMin and RestartMax bound the backoff between restarts after
	// crashes; a run longer than StableAfter resets it.
	RestartMin, RestartMax, StableAfter time.Duration
	// CrashLimit crashes within CrashWindow mark the agent crash-looping.
	CrashLimit  int
	CrashWindow time.Duration
	// StopTimeout is how long the agent has to exit after the stop signal
	// is forwarded, before its process group is killed.
	StopTimeout time.Duration
	// Signals delivers the signals to handle: SIGTERM and SIGINT stop,
	// SIGHUP and SIGUSR1 are forwarded.
	Signals <-chan os.Signal
	Logger  *slog.Logger
}

func (c *Config) defaults() {
	if c.AgentID == "" {
		c.AgentID = c.SUT
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 20 * time.Second
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 5 * time.Second
	}
	if c.MarkerDir == "" {
		c.MarkerDir = "/tmp"
	}
	if c.RestartMin == 0 {
		c.RestartMin = time.Second
	}
	if c.RestartMax == 0 {
		c.RestartMax = time.Minute
	}
	if c.StableAfter == 0 {
		c.StableAfter = time.Minute
	}
	if c.CrashLimit == 0 {
		c.CrashLimit = 5
	}
	if c.CrashWindow == 0 {
		c.CrashWindow = 5 * time.Minute
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 8 * time.Second
	}
	if c.LogKeep == 0 {
		c.LogKeep = 5
	}
	if c.LogMaxSize == 0 {
		c.LogMaxSize = 10 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// supervisor is the state of one Run.
type supervisor struct {
	cfg  Config
	log  *slog.Logger
	out  io.Writer
	pub  *publisher
	file *RotatingFile
	// redact hides secrets in each output line before it goes anywhere.
	redact *redact.Redactor

	outMu sync.Mutex // serialises output lines

	mu      sync.Mutex
	hb      Heartbeat
	crashes []time.Time
	// restartAsked is set when SIGUSR1 was forwarded: newer agents exit
	// after their job to restart, which is not a crash.
	restartAsked bool
}

// Run supervises the agent until it is stopped by a signal or ctx, and
// returns the agent's last exit status.
func Run(ctx context.Context, cfg Config) (int, error) {
	cfg.defaults()
	if len(cfg.Command) == 0 {
		return 2, errors.New("no agent command given")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return 1, fmt.Errorf("state folder: %w", err)
	}
	s := &supervisor{cfg: cfg, log: cfg.Logger, redact: redact.New(cfg.Secrets...)}
	s.hb = Heartbeat{SUT: cfg.SUT, State: StateStarting, Since: time.Now(), Interval: cfg.StatusInterval}
	s.out = cfg.Stdout
	if cfg.LogFile != "" {
		s.file = &RotatingFile{Path: cfg.LogFile, MaxSize: cfg.LogMaxSize, Keep: cfg.LogKeep}
		defer s.file.Close()
	}
	if cfg.MQTT.Broker != "" {
		s.pub = newPublisher(cfg.SUT, cfg.MQTT, s.log)
		defer s.pub.close()
	}
	s.writeHeartbeat()

	ctx, cancel := context.WithCancel(ctx)
	tickerDone := make(chan struct{})
	go func() { defer close(tickerDone); s.ticker(ctx) }()
	// Nothing is written after Run returns.
	defer func() { cancel(); <-tickerDone }()

	backoff := cfg.RestartMin
	for {
		code, ran, stopped, err := s.runOnce(ctx)
		if stopped || ctx.Err() != nil {
			s.setState(StateStopping, "")
			s.writeHeartbeat()
			return code, err
		}
		if err != nil {
			return 1, err
		}
		exit := describeExit(code)
		restartMarker := filepath.Join(cfg.MarkerDir, "TESTFLINGER-DEVICE-RESTART-"+cfg.AgentID)
		requested := false
		if _, err := os.Stat(restartMarker); err == nil {
			requested = true
			_ = os.Remove(restartMarker)
		}
		s.mu.Lock()
		s.hb.LastExit = exit
		if requested {
			s.log.Info("agent exited on a restart request; starting it again", "exit", exit)
		} else if s.restartAsked {
			s.log.Info("agent exited after a restart request (SIGUSR1); starting it again", "exit", exit)
			requested = true
		} else {
			s.hb.Restarts++
			s.crashes = append(s.crashes, time.Now())
			s.countCrashes()
		}
		s.restartAsked = false
		s.mu.Unlock()
		wait := time.Duration(0)
		if !requested {
			if ran >= cfg.StableAfter {
				backoff = cfg.RestartMin
			}
			wait = backoff
			backoff = min(backoff*2, cfg.RestartMax)
			s.log.Warn("agent exited; restarting", "exit", exit, "after", wait, "restarts", s.hb.Restarts)
			s.emit(fmt.Sprintf("labsync-agent: testflinger-agent %s; restarting in %s (restart %d)", exit, wait, s.hb.Restarts))
		}
		s.setState(StateRestarting, "")
		s.writeHeartbeat()
		timer := time.NewTimer(wait)
	backoff:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return code, nil
			case sig := <-cfg.Signals:
				if sig == syscall.SIGTERM || sig == syscall.SIGINT {
					timer.Stop()
					return code, nil
				}
				s.log.Info("signal ignored: the agent is not running", "signal", sig)
			case <-timer.C:
				break backoff
			}
		}
	}
}

// agentEnviron returns environ without labsync-agent's own settings
// (LABSYNC_AGENT_*, LABSYNC_SUT): the agent needs none of them, and they
// include the MQTT password.
func agentEnviron(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, e := range environ {
		name, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(name, "LABSYNC_AGENT_") || name == "LABSYNC_SUT" {
			continue
		}
		out = append(out, e)
	}
	return out
}

// describeExit turns an exit status into words.
func describeExit(code int) string {
	if code > 128 {
		return fmt.Sprintf("was killed by signal %d", code-128)
	}
	return fmt.Sprintf("exited with code %d", code)
}

// runOnce starts the agent and waits for it. stopped is true when a stop
// signal ended it.
func (s *supervisor) runOnce(ctx context.Context) (code int, ran time.Duration, stopped bool, err error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 1, 0, false, err
	}
	cmd := exec.Command(s.cfg.Command[0], s.cfg.Command[1:]...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Env = append(agentEnviron(os.Environ()), s.cfg.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		s.emit(fmt.Sprintf("labsync-agent: cannot start %s: %v", s.cfg.Command[0], err))
		// A command that cannot start is a crash: it is retried with
		// backoff and counts towards a crash loop.
		return 127, 0, false, nil
	}
	pw.Close()
	s.mu.Lock()
	s.hb.ChildPID, s.hb.Running = cmd.Process.Pid, true
	s.mu.Unlock()
	s.setState(StateStarting, "")
	s.writeHeartbeat()

	lines := make(chan struct{})
	go func() { defer close(lines); s.pump(pr) }()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var waitErr error
loop:
	for {
		select {
		case waitErr = <-waited:
			break loop
		case <-ctx.Done():
			stopped = true
			waitErr = s.stop(cmd, syscall.SIGTERM, waited)
			break loop
		case sig := <-s.cfg.Signals:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				stopped = true
				waitErr = s.stop(cmd, sig.(syscall.Signal), waited)
				break loop
			}
			s.log.Info("forwarding signal", "signal", sig)
			if sig == syscall.SIGUSR1 {
				s.mu.Lock()
				s.restartAsked = true
				s.mu.Unlock()
			}
			_ = cmd.Process.Signal(sig)
		}
	}
	// Processes the agent left behind (a device connector mid-provision)
	// must not go on driving the device, nor hold the output pipe open.
	s.reapGroup(cmd.Process.Pid)
	select {
	case <-lines:
	case <-time.After(2 * time.Second):
		s.log.Warn("agent output still open after it exited; closing it")
	}
	pr.Close()
	<-lines
	s.mu.Lock()
	s.hb.Running, s.hb.ChildPID = false, 0
	s.mu.Unlock()
	return exitCode(waitErr), time.Since(start), stopped, nil
}

// reapGroup ends what is left of the agent's process group: SIGTERM, a
// short grace, then SIGKILL.
func (s *supervisor) reapGroup(pgid int) {
	if syscall.Kill(-pgid, syscall.SIGTERM) != nil {
		return // nothing left
	}
	// A process group gives no notice when it empties: poll it.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		select {
		case <-tick.C:
			continue
		case <-deadline:
		}
		break
	}
	if syscall.Kill(-pgid, 0) != nil {
		return
	}
	s.log.Warn("processes of the agent survived SIGTERM; killing them")
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// stop forwards sig, waits StopTimeout, then kills the process group.
func (s *supervisor) stop(cmd *exec.Cmd, sig syscall.Signal, waited <-chan error) error {
	s.setState(StateStopping, "")
	s.log.Info("stopping agent", "signal", sig, "timeout", s.cfg.StopTimeout)
	_ = cmd.Process.Signal(sig)
	select {
	case err := <-waited:
		return err
	case <-time.After(s.cfg.StopTimeout):
		s.emit(fmt.Sprintf("labsync-agent: testflinger-agent did not stop within %s; killing it", s.cfg.StopTimeout))
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return <-waited
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			return 128 + int(st.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

// maxLine bounds one output line; longer lines are split.
const maxLine = 64 << 10

// pump reads the agent's merged output line by line.
func (s *supervisor) pump(r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			text := string(line)
			if text[len(text)-1] == '\n' {
				text = text[:len(text)-1]
			}
			s.handleLine(text)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// emit writes a line of the supervisor's own into the agent's output.
func (s *supervisor) emit(line string) { s.handleLine(line) }

// handleLine redacts a line once, then sends it everywhere: stdout, the
// log file, MQTT, and the job tracking that publishes job ids.
func (s *supervisor) handleLine(line string) {
	line = s.redact.String(line)
	s.outMu.Lock()
	defer s.outMu.Unlock()
	b := []byte(line + "\n")
	_, _ = s.out.Write(b)
	if s.file != nil {
		if _, err := s.file.Write(b); err != nil {
			s.log.Warn("log file", "err", err)
		}
	}
	s.pub.retain(s.cfg.SUT+"/output", []byte(line), 0)
	switch kind, job := ParseLine(line); kind {
	case LineJobStart:
		s.pub.retain(s.cfg.SUT+"/last_job", []byte(job), 1)
		s.setState(StateBusy, job)
	case LineIdle:
		s.setState(StateIdle, "")
	}
}

// stateMsg is the payload of <sut>/agent/state.
type stateMsg struct {
	State string    `json:"state"`
	JobID string    `json:"job_id,omitempty"`
	Since time.Time `json:"since"`
}

func (s *supervisor) setState(state, job string) {
	s.mu.Lock()
	if s.hb.State == state && s.hb.JobID == job {
		s.mu.Unlock()
		return
	}
	s.hb.State, s.hb.JobID, s.hb.Since = state, job, time.Now()
	msg, _ := json.Marshal(stateMsg{State: state, JobID: job, Since: s.hb.Since})
	s.mu.Unlock()
	s.pub.retain(s.cfg.SUT+"/agent/state", msg, 1)
	s.writeHeartbeat()
}

// countCrashes forgets crashes older than the window and says whether the
// agent is crash-looping; callers hold s.mu.
func (s *supervisor) countCrashes() {
	now := time.Now()
	recent := s.crashes[:0]
	for _, t := range s.crashes {
		if now.Sub(t) < s.cfg.CrashWindow {
			recent = append(recent, t)
		}
	}
	s.crashes = recent
	s.hb.RecentCrashes = len(recent)
	s.hb.CrashLoop = len(recent) >= s.cfg.CrashLimit
}

func (s *supervisor) writeHeartbeat() {
	s.mu.Lock()
	s.countCrashes()
	_, err := os.Stat(filepath.Join(s.cfg.MarkerDir, "TESTFLINGER-DEVICE-OFFLINE-"+s.cfg.AgentID))
	s.hb.Offline = err == nil
	s.hb.Time = time.Now()
	hb := s.hb
	s.mu.Unlock()
	if err := WriteHeartbeat(filepath.Join(s.cfg.StateDir, HeartbeatFile), hb); err != nil {
		s.log.Warn("heartbeat file", "err", err)
	}
}

// ticker rewrites the heartbeat file and publishes "ok".
func (s *supervisor) ticker(ctx context.Context) {
	status := time.NewTicker(s.cfg.StatusInterval)
	defer status.Stop()
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-status.C:
			s.writeHeartbeat()
		case <-beat.C:
			s.pub.beat("ok")
		}
	}
}
