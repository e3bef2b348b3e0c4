package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// healer restarts agents that failed enough healthchecks in a row, within
// a restart budget, and tells apart the agents whose device is offline
// (their agent says so; a restart would not help).
type healer struct {
	docker      Docker
	opts        AutoHeal
	stopTimeout time.Duration
	budget      FlapLimiter
	emit        func(Event)
	log         *slog.Logger
}

func newHealer(docker Docker, opts AutoHeal, stopTimeout time.Duration, emit func(Event), log *slog.Logger) *healer {
	return &healer{docker: docker, opts: opts, stopTimeout: stopTimeout, budget: FlapLimiter{Max: opts.Max, Window: opts.Window}, emit: emit, log: log}
}

// check returns the agents of obs whose device is offline, and auto-heals
// the other unhealthy ones when asked to.
func (h *healer) check(ctx context.Context, obs *runtime.Observed) map[string]bool {
	offline := map[string]bool{}
	for _, o := range obs.Containers {
		if o.Kind != lab.KindAgent || o.Health != "unhealthy" || o.Aside {
			continue
		}
		if a, err := h.docker.AgentActivity(ctx, o.ID); err == nil && a.Offline {
			offline[o.Object] = true
			continue
		}
		h.heal(ctx, o)
	}
	return offline
}

// heal restarts an agent that failed enough healthchecks in a row, within
// its restart budget. Each restart, and each refusal, is an event.
func (h *healer) heal(ctx context.Context, o runtime.ObservedContainer) {
	if h.opts.After <= 0 {
		return
	}
	streak, err := h.docker.FailingStreak(ctx, o.ID)
	if err != nil || streak < h.opts.After {
		return
	}
	key := "agent/" + o.Object
	if a, err := h.docker.AgentActivity(ctx, o.ID); err == nil && a.Busy {
		return // its job may be quiet; Docker's check alone is not enough to kill it
	}
	if !h.budget.Allow(key, time.Now()) {
		h.emit(Event{Time: time.Now(), Type: "auto-heal", Object: key, Error: true,
			Message: fmt.Sprintf("%s is unhealthy (%d failed checks) but was restarted %d times within %s already; not restarting it again", o.Name, streak, h.opts.Max, h.opts.Window)})
		return
	}
	err = h.docker.RestartContainer(ctx, o.ID, h.stopTimeout)
	e := Event{Time: time.Now(), Type: "auto-heal", Object: key, Message: fmt.Sprintf("restarted %s after %d failed healthchecks in a row", o.Name, streak)}
	if err != nil {
		e.Message, e.Error = fmt.Sprintf("restart of unhealthy %s failed: %v", o.Name, err), true
	}
	h.log.Warn("auto-heal", "object", key, "streak", streak, "err", err)
	h.emit(e)
}

// setObserved shows reading seq of the host, unless a newer one is shown,
// marks the agents whose device is offline, and auto-heals unhealthy
// agents when asked to. It reports whether the reading is shown.
func (c *Controller) setObserved(ctx context.Context, seq uint64, obs *runtime.Observed) bool {
	// Healing acts on containers: never on a reading older than the one
	// shown, whose containers a pass may have replaced since.
	if !c.store.newest(seq) {
		return false
	}
	return c.store.setObserved(seq, obs, c.healer.check(ctx, obs))
}

// RestartAgent restarts a managed agent's container now (the MQTT restart
// command). Only agents of this lab's desired state that have a container
// can be restarted, and one that runs a job only when forced: the refusal
// is an *AgentBusyError.
func (c *Controller) RestartAgent(ctx context.Context, name string, force bool) error {
	// Never while a pass changes containers: it may be replacing this one.
	if !c.passMu.TryLock() {
		return fmt.Errorf("a pass is under way; try again when it is done")
	}
	defer c.passMu.Unlock()
	st := c.Status()
	if st.Desired == nil {
		return fmt.Errorf("no pass has read the lab yet")
	}
	obs, err := c.opts.Docker.Observe(ctx, st.Desired.Lab)
	if err != nil {
		return err
	}
	for _, o := range obs.Containers {
		if o.Kind == lab.KindAgent && o.Object == name && !o.Aside {
			if !force {
				if err := c.restartBusy(ctx, st.Desired, o); err != nil {
					return err
				}
			}
			err := c.opts.Docker.RestartContainer(ctx, o.ID, c.opts.Apply.StopTimeout)
			e := Event{Time: time.Now(), Type: "command", Object: "agent/" + name, Message: "restarted " + o.Name + " on request"}
			if force {
				e.Message += " (forced)"
			}
			if err != nil {
				e.Message, e.Error = fmt.Sprintf("restart of %s failed: %v", o.Name, err), true
			}
			c.store.emit(e)
			c.Refresh()
			return err
		}
	}
	return fmt.Errorf("no managed agent %q", name)
}

// restartBusy returns an *AgentBusyError when the agent of o runs a job,
// as its labsync-agent heartbeat says, or, when it has none, as the
// Testflinger server says. An agent whose activity nobody can tell is not
// busy, as for auto-heal and apply.
func (c *Controller) restartBusy(ctx context.Context, d *lab.Desired, o runtime.ObservedContainer) error {
	if o.State != "running" {
		return nil
	}
	a, err := c.opts.Docker.AgentActivity(ctx, o.ID)
	if err == nil && a.Known {
		if a.Busy {
			return &AgentBusyError{Agent: o.Object, JobID: a.JobID, Since: a.Since, Source: "heartbeat"}
		}
		return nil
	}
	if c.opts.AgentIdle == nil || d.TestflingerServer == "" {
		return nil
	}
	idle, err := c.opts.AgentIdle(ctx, d, o.Object)
	if err != nil {
		c.log.Warn("agent activity unknown; restarting it", "object", o.Object, "err", err)
		return nil
	}
	if !idle {
		return &AgentBusyError{Agent: o.Object, Source: "Testflinger server"}
	}
	return nil
}

// AgentBusyError is a restart refused because the agent runs a job.
type AgentBusyError struct {
	Agent string
	// JobID and Since are the job and its start, when the agent's
	// heartbeat names them.
	JobID string
	Since time.Time
	// Source says who knows: "heartbeat" or "Testflinger server".
	Source string
}

func (e *AgentBusyError) Error() string {
	if e.JobID == "" {
		return fmt.Sprintf("agent %s is running a job (the %s says so); not restarted", e.Agent, e.Source)
	}
	since := ""
	if !e.Since.IsZero() {
		since = " since " + e.Since.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("agent %s is running job %s%s (its %s says so); not restarted", e.Agent, e.JobID, since, e.Source)
}
