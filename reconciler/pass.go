package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Run is the record of one pass.
type Run struct {
	ID       int64         `json:"id"`
	Triggers []string      `json:"triggers"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	// Revision is the newest revision of the tracked branch; Applied is
	// the one applied (older when the newest is invalid).
	Revision string `json:"revision"`
	Applied  string `json:"applied,omitempty"`
	// Result is ok, failed (some action did not succeed), invalid (the
	// newest revision does not validate) or error (the pass could not run).
	Result      string          `json:"result"`
	Error       string          `json:"error,omitempty"`
	Diagnostics lab.Diagnostics `json:"diagnostics,omitempty"`
	Plan        *Changeset      `json:"plan,omitempty"`
	Results     []Result        `json:"results,omitempty"`
	Fetched     bool            `json:"fetched"`
	FetchTime   time.Duration   `json:"fetch_duration_ns,omitempty"`

	actionsFailed bool // some action failed, whatever the result says
	applied       bool // the pass got to apply its plan
}

// Run results.
const (
	ResultOK      = "ok"
	ResultFailed  = "failed"
	ResultInvalid = "invalid"
	ResultError   = "error"
)

// pass is one reconcile: revision, desired state, observe, plan, apply.
// Its record is always written, whatever the exit path.
func (c *Controller) pass(ctx context.Context, req passRequest) (run Run) {
	c.passMu.Lock()
	defer c.passMu.Unlock()
	run = c.store.startRun(req.reasons)
	log := c.log.With("run_id", run.ID)
	log.Info("pass started", "triggers", strings.Join(req.reasons, ", "))
	defer func() {
		run.Duration = time.Since(run.Started)
		c.store.record(run)
		log.Info("pass finished", "result", run.Result, "revision", short(run.Revision), "applied", short(run.Applied), "duration", run.Duration.Round(time.Millisecond), "err", run.Error)
		if c.opts.OnRun != nil {
			c.opts.OnRun(run)
		}
	}()
	converge := func(ctx context.Context, run *Run) error { return c.stepConverge(ctx, run, req) }
	for _, step := range []func(context.Context, *Run) error{c.stepRevision, c.stepDesired, converge} {
		if err := runStep(ctx, step, &run, log); err != nil {
			if errors.Is(err, errStop) {
				return run
			}
			run.Result, run.Error = ResultError, err.Error()
			return run
		}
	}
	return run
}

// runStep runs one step of a pass. A panic in it ends the pass with an
// error instead of the daemon: the pass is recorded, reported and retried
// on the backoff like any failed pass.
func runStep(ctx context.Context, step func(context.Context, *Run) error, run *Run, log *slog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("pass step panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error, the pass was abandoned (please report it): %v", p)
		}
	}()
	return step(ctx, run)
}

// errStop ends a pass early without it being an error.
var errStop = errors.New("stop")

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// stepRevision finds the newest revision: a cheap head check, and a fetch
// only when the head moved.
func (c *Controller) stepRevision(ctx context.Context, run *Run) error {
	src := c.opts.Source
	head, err := src.RemoteHead(ctx)
	local := src.LocalHead()
	switch {
	case err != nil && local == "":
		return fmt.Errorf("repository unreachable and never fetched: %w", err)
	case err != nil:
		// The remote is down: keep the host at the last revision.
		c.log.Warn("repository unreachable; keeping the last fetched revision", "err", err)
	case head != local:
		start := time.Now()
		if _, err := src.Fetch(ctx); err != nil {
			if local == "" {
				return err
			}
			c.log.Warn("fetch failed; keeping the last fetched revision", "err", err)
		}
		run.Fetched, run.FetchTime = true, time.Since(start)
	}
	run.Revision = src.LocalHead()
	c.store.update(func(s *LabStatus) { s.Revision, s.Ready = run.Revision, true })
	return nil
}

// stepDesired loads and compiles the newest revision, unless it is the one
// already compiled or one that already failed validation. An invalid
// revision leaves the last good desired state in force.
func (c *Controller) stepDesired(ctx context.Context, run *Run) error {
	st := c.store.get()
	rev := run.Revision
	switch rev {
	case st.LastGood:
	case st.Invalid:
		run.Result = ResultInvalid
		run.Error = fmt.Sprintf("revision %s is invalid (not retried); %s", short(rev), lastGoodNote(st.LastGood))
		if run.Diagnostics = c.store.diagnostics(rev); st.Desired == nil {
			return errStop
		}
	default:
		l, err := c.load(ctx, rev)
		if l == nil {
			return err
		}
		run.Diagnostics = l.Diagnostics
		var verr *lab.ValidationError
		if errors.As(err, &verr) {
			c.store.update(func(s *LabStatus) { s.Invalid = rev })
			run.Result, run.Error = ResultInvalid, fmt.Sprintf("revision %s is invalid: %s; %s", short(rev), strings.TrimPrefix(err.Error(), "invalid lab: "), lastGoodNote(st.LastGood))
			if st.Desired != nil {
				break
			}
			// A daemon that starts on an invalid revision keeps the host at
			// the one its containers were made at, rather than at nothing.
			d, herr := c.desiredOfHost(ctx, l.Name)
			if d == nil {
				if herr != nil {
					c.log.Warn("the revision the host was last applied at cannot be used", "err", herr)
				}
				return errStop
			}
			c.store.update(func(s *LabStatus) { s.Lab, s.Desired, s.LastGood = d.Lab, d, d.Revision })
			c.watch(d.Lab)
			run.Error = fmt.Sprintf("revision %s is invalid: %s; the host stays at %s, the revision its newest container was made at", short(rev), strings.TrimPrefix(err.Error(), "invalid lab: "), short(d.Revision))
			break
		}
		if err != nil {
			return err
		}
		d := lab.Compile(l, lab.CompileOptions{Revision: rev})
		c.store.update(func(s *LabStatus) { s.Lab, s.Desired, s.LastGood, s.Invalid = d.Lab, d, rev, "" })
		c.watch(d.Lab)
	}
	return nil
}

// load loads revision rev within the load timeout. A revision too big to
// load in time is an invalid one (a *lab.ValidationError, with the lab as
// far as it was read), so that it is not loaded again. A nil lab means
// the revision could not be read at all.
func (c *Controller) load(ctx context.Context, rev string) (*lab.Lab, error) {
	tree, err := c.opts.Source.Tree(rev)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
	defer cancel()
	l, err := lab.LoadContext(lctx, tree, c.opts.Load)
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("load revision %s: %w", short(rev), err)
	case err != nil && lctx.Err() != nil:
		// The revision itself is too much to load: remembered like an
		// invalid one, so it is not loaded again until a new commit.
		l.Diagnostics = append(l.Diagnostics, lab.Diagnostic{Severity: lab.SeverityError,
			Message: fmt.Sprintf("loading this revision took longer than %s; labsync does not try it again; make the lab smaller", c.opts.LoadTimeout)})
		err = &lab.ValidationError{Diagnostics: l.Diagnostics}
	}
	return l, err
}

// desiredOfHost compiles the revision that the newest container of the
// lab was made at: the last one applied to this host. Nil when the lab
// has no container, or that revision cannot be read or is invalid too.
func (c *Controller) desiredOfHost(ctx context.Context, labName string) (*lab.Desired, error) {
	obs, err := c.opts.Docker.Observe(ctx, labName)
	if err != nil {
		return nil, err
	}
	var newest *runtime.ObservedContainer
	for i := range obs.Containers {
		o := &obs.Containers[i]
		if o.Revision != "" && (newest == nil || o.Created.After(newest.Created)) {
			newest = o
		}
	}
	if newest == nil {
		return nil, nil
	}
	l, err := c.load(ctx, newest.Revision)
	if err != nil {
		return nil, fmt.Errorf("revision %s, of container %s: %w", short(newest.Revision), newest.Name, err)
	}
	if l.Name != labName {
		return nil, fmt.Errorf("revision %s, of container %s, names lab %s, not %s", short(newest.Revision), newest.Name, l.Name, labName)
	}
	return lab.Compile(l, lab.CompileOptions{Revision: newest.Revision}), nil
}

func lastGoodNote(lastGood string) string {
	if lastGood == "" {
		return "nothing is applied until a valid revision arrives"
	}
	return "the host stays at " + short(lastGood)
}

// stepConverge observes the host, plans against the desired state in force
// and applies the plan.
func (c *Controller) stepConverge(ctx context.Context, run *Run, req passRequest) error {
	desired := c.store.get().Desired
	run.Applied = desired.Revision
	seq := c.store.beginObservation()
	obs, err := c.opts.Docker.Observe(ctx, desired.Lab)
	if err != nil {
		return err
	}
	if err := c.checkIdentity(ctx, desired, obs); err != nil {
		return err
	}
	if err := c.withAdopted(ctx, obs); err != nil {
		return err
	}
	if req.driftCheck {
		drift, err := DeepDrift(ctx, c.opts.Docker, desired, obs)
		if err != nil {
			// What was found in the other containers still counts.
			c.log.Warn("deep drift check incomplete", "err", err)
		}
		c.drift = drift
	}
	forcePrune := c.forcePrune
	opts := PlanOptions{ForcePrune: forcePrune, Adopt: c.opts.Adopt, Drift: c.drift}
	if req.cleanSlate {
		opts.Recreate = c.idleAgents(ctx, desired)
	}
	plan, err := PlanHost(ctx, desired, obs, opts, c.opts.Docker.Foreign)
	if err != nil {
		return err
	}
	if forcePrune {
		// Once: the guard protects every later revision again.
		c.forcePrune = false
		c.log.Warn("this pass removes orphans past the prune guard (--force-prune); later passes are guarded again")
	}
	plan = c.failed.holdBack(plan, req.retryFailed)
	run.Plan = plan
	if run.Result == "" {
		run.Result = ResultOK
	}
	if !plan.Empty() {
		aopts := c.opts.Apply
		aopts.Logger = c.log.With("run_id", run.ID)
		aopts.AgentMQTTDir = ""
		if c.opts.AgentMQTTDir != nil {
			aopts.AgentMQTTDir = c.opts.AgentMQTTDir(desired)
		}
		aopts.Source = c.opts.Identity
		aopts.ForceBusy = c.busy.expired(desired, plan, aopts.Logger)
		if c.opts.AgentIdle != nil && desired.TestflingerServer != "" {
			aopts.ServerBusy = func(ctx context.Context, agent string) (bool, error) {
				idle, err := c.opts.AgentIdle(ctx, desired, agent)
				return !idle, err
			}
		}
		run.applied = true
		report := Apply(ctx, c.opts.Docker, plan, aopts)
		run.Results = report.Results
		c.busy.track(report.Results)
		c.failed.track(report.Results)
		if d := report.Deferred(); len(d) > 0 {
			run.Error = fmt.Sprintf("%d change(s) wait for a job to end or a device to be free: %s", len(d), strings.Join(d, ", "))
		}
		run.actionsFailed = report.Failed() > 0
		if report.Failed() > 0 && run.Result == ResultOK {
			run.Result = ResultFailed
			run.Error = fmt.Sprintf("%d of %d action(s) did not succeed", report.Failed(), len(report.Results))
		}
		seq = c.store.beginObservation()
		if obs, err = c.opts.Docker.Observe(ctx, desired.Lab); err != nil {
			return err
		}
		if err := c.withAdopted(ctx, obs); err != nil {
			return err
		}
		// What still differs after the apply: the drift status shows.
		if plan, err = PlanHost(ctx, desired, obs, PlanOptions{ForcePrune: forcePrune, Adopt: c.opts.Adopt, Drift: c.drift}, c.opts.Docker.Foreign); err != nil {
			return err
		}
	}

	if plan.Empty() {
		c.busy.track(nil) // nothing waits any more
	}
	c.setObserved(ctx, seq, obs)
	c.store.update(func(s *LabStatus) {
		s.Plan = plan
		for _, r := range run.Results {
			key := r.Action.ObjectKind + "/" + r.Action.Object
			if r.Status == StatusOK {
				delete(s.LastErrors, key)
			} else {
				s.LastErrors[key] = r.Error
			}
		}
		if run.Result == ResultOK {
			s.LastOK = time.Now()
		}
	})
	return nil
}

// idleAgents returns the agents a clean slate may recreate: those the
// idle check says run no job. An agent whose state cannot be read is left
// alone.
func (c *Controller) idleAgents(ctx context.Context, d *lab.Desired) map[string]string {
	if c.opts.AgentIdle == nil {
		c.log.Warn("clean slate skipped: no way to tell idle agents (set testflinger.server in lab.yaml)")
		return nil
	}
	out := map[string]string{}
	for _, spec := range d.Containers {
		if spec.Kind != lab.KindAgent {
			continue
		}
		idle, err := c.opts.AgentIdle(ctx, d, spec.Name)
		switch {
		case err != nil:
			c.log.Warn("clean slate: agent state unknown; not recreated", "object", spec.Name, "err", err)
		case idle:
			out[spec.Name] = "clean slate: scheduled recreate of an idle agent"
		default:
			c.log.Info("clean slate: agent is busy; not recreated", "object", spec.Name)
		}
	}
	return out
}
