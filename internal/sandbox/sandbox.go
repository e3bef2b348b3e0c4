// Package sandbox runs a command on untrusted input under limits of
// resident memory, CPU time and wall time, so that whatever the input does
// (loop, allocate, crash) the process that started it carries on and can
// say what happened.
package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Limits bound one run. A zero field is no limit.
type Limits struct {
	// Memory bounds the resident memory of the process, in bytes. The
	// process also gets GOMEMLIMIT at three quarters of it, so a Go
	// program collects garbage harder before it reaches the limit.
	Memory int64
	// CPU bounds the CPU time the process uses.
	CPU time.Duration
	// Wall bounds the time it runs.
	Wall time.Duration
	// Output bounds what is kept of standard output (default 8 MiB); a
	// process that writes more is ended.
	Output int
}

// Limit names the limit that ended a run.
type Limit string

// Limits that end a run.
const (
	LimitMemory Limit = "memory"
	LimitCPU    Limit = "cpu time"
	LimitWall   Limit = "wall time"
	LimitOutput Limit = "output size"
)

// Result is what a run did.
type Result struct {
	Stdout []byte
	// Stderr is the end of standard error, at most 4 KiB.
	Stderr string
	// ExitCode is the exit status, or -1 when a signal ended the process.
	ExitCode int
	Signal   syscall.Signal
	// Limit is the limit that ended the process, if one did.
	Limit Limit
	// PeakRSS is the largest resident memory seen while the process ran
	// (read every 10 ms; 0 when it ended before the first reading).
	PeakRSS int64
	CPU     time.Duration
	Wall    time.Duration
}

// OK reports whether the process exited 0 within its limits.
func (r *Result) OK() bool { return r.ExitCode == 0 && r.Limit == "" }

// Describe says in words how the run ended, for reports.
func (r *Result) Describe(lim Limits) string {
	switch r.Limit {
	case LimitMemory:
		return fmt.Sprintf("stopped at its memory limit of %d MiB", lim.Memory>>20)
	case LimitCPU:
		return fmt.Sprintf("stopped at its CPU time limit of %s", lim.CPU)
	case LimitWall:
		return fmt.Sprintf("stopped at its time limit of %s", lim.Wall)
	case LimitOutput:
		return fmt.Sprintf("stopped: it wrote more than %d bytes", outputLimit(lim))
	}
	if r.Signal != 0 {
		return fmt.Sprintf("killed by signal %d (%s)", int(r.Signal), r.Signal)
	}
	if r.ExitCode != 0 {
		return fmt.Sprintf("exited with code %d", r.ExitCode)
	}
	return "exited normally"
}

func outputLimit(lim Limits) int {
	if lim.Output > 0 {
		return lim.Output
	}
	return 8 << 20
}

// Command is what to run.
type Command struct {
	Path string
	Args []string
	// Env is the whole environment of the process (nothing is inherited).
	Env   []string
	Stdin []byte
}

// Run runs cmd under lim and waits for it. It returns an error only when
// the process cannot start or ctx ends; a crash or a limit is a Result.
func Run(ctx context.Context, cmd Command, lim Limits) (*Result, error) {
	c := exec.Command(cmd.Path, cmd.Args...)
	c.Env = append([]string(nil), cmd.Env...)
	if lim.Memory > 0 {
		c.Env = append(c.Env, fmt.Sprintf("GOMEMLIMIT=%d", lim.Memory/4*3))
	}
	c.Stdin = bytes.NewReader(cmd.Stdin)
	stdout := &capped{max: outputLimit(lim), overflow: make(chan struct{})}
	stderr := &tail{max: 4 << 10}
	c.Stdout, c.Stderr = stdout, stderr
	c.SysProcAttr = sysProcAttr()
	start := time.Now()
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pid := c.Process.Pid
	kill := func() { _ = syscall.Kill(-pid, syscall.SIGKILL) }
	if err := limitCPU(pid, lim.CPU); err != nil {
		kill()
		_ = c.Wait()
		return nil, fmt.Errorf("limit the CPU time of %s: %w", cmd.Path, err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()

	var wall <-chan time.Time
	if lim.Wall > 0 {
		t := time.NewTimer(lim.Wall)
		defer t.Stop()
		wall = t.C
	}
	var watch <-chan time.Time
	if memorySupported() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		watch = t.C
	}
	res := &Result{}
	var waitErr error
	var ctxErr error
loop:
	for {
		select {
		case waitErr = <-done:
			break loop
		case <-ctx.Done():
			ctxErr = ctx.Err()
			kill()
		case <-stdout.overflow:
			res.Limit = LimitOutput
			stdout.overflow = nil
			kill()
		case <-wall:
			res.Limit = LimitWall
			kill()
		case <-watch:
			rss, peak := memory(pid)
			res.PeakRSS = max(res.PeakRSS, peak, rss)
			if lim.Memory > 0 && rss > lim.Memory {
				res.Limit = LimitMemory
				kill()
				watch = nil
			}
		}
	}
	res.Wall = time.Since(start)
	res.Stdout, res.Stderr = stdout.buf.Bytes(), stderr.String()
	if st := c.ProcessState; st != nil {
		res.ExitCode = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = ws.Signal()
		}
		res.CPU = st.UserTime() + st.SystemTime()
		// The kernel ends a process at its CPU limit with SIGKILL.
		if res.Limit == "" && lim.CPU > 0 && res.Signal == syscall.SIGKILL && res.CPU >= lim.CPU-time.Second {
			res.Limit = LimitCPU
		}
	}
	if ctxErr != nil {
		return res, ctxErr
	}
	var ee *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &ee) {
		return res, fmt.Errorf("wait for %s: %w", cmd.Path, waitErr)
	}
	return res, nil
}

// Environ returns the variables of the current environment named in keep,
// for a child's Env.
func Environ(keep ...string) []string {
	var out []string
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		for _, k := range keep {
			if name == k {
				out = append(out, e)
			}
		}
	}
	return out
}

// capped keeps the first max bytes written and closes overflow at the
// first byte past them; it never fails a write, so the process ends by
// the limit, not by a broken pipe.
type capped struct {
	buf      bytes.Buffer
	max      int
	over     bool
	overflow chan struct{}
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.buf.Write(p[:max(room, 0)])
		if !c.over {
			c.over = true
			close(c.overflow)
		}
		return len(p), nil
	}
	return c.buf.Write(p)
}

// tail keeps the last max bytes written.
type tail struct {
	b   []byte
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { return strings.ToValidUTF8(string(t.b), "?") }
