package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Source is the git side of a controller: gitsource.Source is the real one.
type Source interface {
	RemoteHead(ctx context.Context) (string, error)
	LocalHead() string
	Fetch(ctx context.Context) (string, error)
	Tree(commit string) (fs.FS, error)
}

// Docker is the engine side of a controller: runtime.Client is the real one.
type Docker interface {
	Engine
	Observe(ctx context.Context, labName string) (*runtime.Observed, error)
	Ping(ctx context.Context) error
	RestartContainer(ctx context.Context, id string, timeout time.Duration) error
	Foreign(ctx context.Context, o runtime.ForeignOptions) (*runtime.Foreign, error)
	FailingStreak(ctx context.Context, id string) (int, error)
}

var _ Docker = (*runtime.Client)(nil)

// ControllerOptions configure a Controller.
type ControllerOptions struct {
	Source Source
	Docker Docker
	// DefaultName is the lab name when lab.yaml sets none.
	DefaultName string
	// Load bounds loading a revision and carries the host policy; its
	// DefaultName is ignored.
	Load lab.LoadOptions
	// LoadTimeout bounds loading one revision (default 2m).
	LoadTimeout time.Duration
	// PollInterval is how often the remote head is checked; 0 disables
	// polling. Each wait is jittered by up to 10%.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed pass is
	// retried (doubling, with jitter).
	MinBackoff, MaxBackoff time.Duration
	// ForcePrune lets passes remove orphans past the prune guard.
	ForcePrune bool
	// AgentMQTTDir, when set, says where the embedded broker's agents'
	// socket is for a pass about to apply the desired state ("" when
	// there is none): new agent containers that name no broker get it
	// (see ApplyOptions.AgentMQTTDir).
	AgentMQTTDir func(*lab.Desired) string
	// Adopt takes over the containers, volumes and networks labsync did
	// not make that stand in its way (the old stack's), in every pass: see
	// PlanOptions.Adopt. It is meant for the takeover; drop it after.
	Adopt  bool
	Apply  ApplyOptions
	Logger *slog.Logger
	// History is the number of runs kept for status (default 50).
	History int
	// OnRun is called after every pass with its record.
	OnRun func(Run)
	// Events, when set, streams the lab's container events; each die,
	// destroy or unhealthy event within FlapLimit triggers a pass. The
	// stream is (re)opened whenever the lab's name becomes known or
	// changes.
	Events    func(ctx context.Context, labName string) <-chan runtime.Event
	FlapLimit *FlapLimiter
	// BusyRecheck is how soon a pass runs again after a change was
	// deferred because an agent was busy (default 30s).
	BusyRecheck time.Duration
	// AgentIdle, when set, says whether an agent runs no job; a clean
	// slate recreates only idle agents. Without it a clean slate does
	// nothing.
	AgentIdle func(ctx context.Context, d *lab.Desired, agent string) (bool, error)
	// OnState is called whenever the status changes: after each pass and
	// each refresh of the observed state (on Docker events).
	OnState func(LabStatus)
	// OnEvent receives events: passes, actions, auto-heals, commands.
	OnEvent func(Event)
	// AutoHeal restarts an agent that failed After healthchecks in a row,
	// at most Max times per Window. After 0 disables it.
	AutoHeal AutoHeal
}

// AutoHeal configures restarts of unhealthy agents.
type AutoHeal struct {
	After  int
	Max    int
	Window time.Duration
}

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
}

// Run results.
const (
	ResultOK      = "ok"
	ResultFailed  = "failed"
	ResultInvalid = "invalid"
	ResultError   = "error"
)

// LabStatus is what a controller knows now.
type LabStatus struct {
	Lab        string            `json:"lab"`
	Revision   string            `json:"revision"`
	LastGood   string            `json:"last_good_revision,omitempty"`
	Invalid    string            `json:"invalid_revision,omitempty"`
	Ready      bool              `json:"ready"`
	Passing    bool              `json:"passing"`
	LastRun    *Run              `json:"last_run,omitempty"`
	LastOK     time.Time         `json:"last_success,omitempty"`
	Desired    *lab.Desired      `json:"-"`
	Observed   *runtime.Observed `json:"-"`
	Plan       *Changeset        `json:"-"`
	LastErrors map[string]string `json:"-"`
	// Offline lists agents whose device is marked offline.
	Offline map[string]bool `json:"-"`
}

// Controller runs passes: one at a time, whenever triggered, coalescing
// triggers that arrive during a pass into exactly one more pass.
type Controller struct {
	opts ControllerOptions
	log  *slog.Logger
	wake chan struct{}

	runCtx      context.Context
	watching    string
	stopWatcher context.CancelFunc

	// busySince records, for each object whose change waits for a job,
	// that change and since when it waits. A record belongs to its
	// change: it goes when the change is applied, reverted or replaced.
	// Only Run's goroutine uses it.
	busySince map[string]busyRecord

	refresh chan struct{}
	heals   FlapLimiter
	// passMu is held by a pass; auto-heal outside a pass takes it too, so
	// it never restarts a container a pass is replacing.
	passMu sync.Mutex

	mu         sync.Mutex
	stateSinks []func(LabStatus)
	eventSinks []func(Event)
	cleanSlate bool
	pending    []string
	// eventsInPass is set when a die, destroy or unhealthy event came
	// during a pass: one more pass checks, unless the pass failed and its
	// retry is due anyway.
	eventsInPass bool
	runs         []Run // newest first
	nextID       int64
	status       LabStatus
	failures     int
}

// NewController makes a controller; Run starts it.
func NewController(opts ControllerOptions) *Controller {
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.History == 0 {
		opts.History = 50
	}
	if opts.BusyRecheck == 0 {
		opts.BusyRecheck = 30 * time.Second
	}
	if opts.LoadTimeout == 0 {
		opts.LoadTimeout = 2 * time.Minute
	}
	opts.Load.DefaultName = opts.DefaultName
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Controller{opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), refresh: make(chan struct{}, 1), busySince: map[string]busyRecord{},
		heals:  FlapLimiter{Max: opts.AutoHeal.Max, Window: opts.AutoHeal.Window},
		status: LabStatus{Lab: opts.DefaultName, LastErrors: map[string]string{}, Offline: map[string]bool{}}}
	c.AddSinks(opts.OnState, opts.OnEvent)
	return c
}

// Trigger asks for a pass. It never blocks; a trigger during a pass causes
// exactly one more pass, whatever the number of triggers.
func (c *Controller) Trigger(reason string) {
	c.mu.Lock()
	if len(c.pending) < 20 && !slices.Contains(c.pending, reason) {
		c.pending = append(c.pending, reason)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// TriggerCleanSlate asks for a pass that also recreates every agent that is
// in sync and idle, so each starts from a fresh container.
func (c *Controller) TriggerCleanSlate(reason string) {
	c.mu.Lock()
	c.cleanSlate = true
	c.mu.Unlock()
	c.Trigger(reason)
}

// Status returns a copy of the controller's status.
func (c *Controller) Status() LabStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.LastErrors = make(map[string]string, len(c.status.LastErrors))
	for k, v := range c.status.LastErrors {
		s.LastErrors[k] = v
	}
	s.Offline = make(map[string]bool, len(c.status.Offline))
	for k, v := range c.status.Offline {
		s.Offline[k] = v
	}
	return s
}

// Runs returns the recent passes, newest first.
func (c *Controller) Runs() []Run {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Run(nil), c.runs...)
}

// Run runs passes until ctx ends: one at start, then on triggers, on the
// poll interval and, after a failure, on the backoff.
func (c *Controller) Run(ctx context.Context) error {
	c.runCtx = ctx
	defer func() {
		if c.stopWatcher != nil {
			c.stopWatcher()
		}
	}()
	c.Trigger("start")
	go c.refresher(ctx)
	var poll, retry, recheck <-chan time.Time
	resetPoll := func() {
		if c.opts.PollInterval > 0 {
			poll = time.After(jitter(c.opts.PollInterval, 0.1))
		}
	}
	resetPoll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-poll:
			c.addPending("poll")
			resetPoll()
		case <-retry:
			c.addPending("retry")
		case <-recheck:
			c.addPending("busy agent re-check")
			recheck = nil
		}
		c.mu.Lock()
		triggers, cleanSlate := c.pending, c.cleanSlate
		c.pending, c.cleanSlate = nil, false
		c.mu.Unlock()
		if len(triggers) == 0 {
			continue // a spare wake-up: a pending retry stays pending
		}
		retry = nil
		run := c.pass(ctx, triggers, cleanSlate)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		eventsInPass := c.eventsInPass
		c.eventsInPass = false
		c.mu.Unlock()
		if run.Result == ResultError || run.Result == ResultFailed || run.actionsFailed {
			c.failures++
			d := c.backoff(c.failures)
			c.log.Info("pass will be retried", "after", d.Round(time.Millisecond), "failures", c.failures)
			retry = time.After(d)
		} else {
			c.failures = 0
			if eventsInPass {
				c.Trigger("docker events during the last pass")
			}
		}
		if len(c.busySince) > 0 && recheck == nil {
			recheck = time.After(c.opts.BusyRecheck)
		}
	}
}

func (c *Controller) addPending(reason string) {
	c.mu.Lock()
	if !slices.Contains(c.pending, reason) {
		c.pending = append(c.pending, reason)
	}
	c.mu.Unlock()
}

// backoff doubles from MinBackoff up to MaxBackoff, with jitter of ±20%.
func (c *Controller) backoff(failures int) time.Duration {
	d := c.opts.MinBackoff
	for i := 1; i < failures && d < c.opts.MaxBackoff; i++ {
		d *= 2
	}
	return jitter(min(d, c.opts.MaxBackoff), 0.2)
}

func jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 - frac + 2*frac*rand.Float64()))
}

// pass is one reconcile: revision, desired state, observe, plan, apply.
// Its record is always written, whatever the exit path.
func (c *Controller) pass(ctx context.Context, triggers []string, cleanSlate bool) (run Run) {
	c.passMu.Lock()
	defer c.passMu.Unlock()
	c.mu.Lock()
	c.nextID++
	run = Run{ID: c.nextID, Triggers: triggers, Started: time.Now()}
	c.status.Passing = true
	c.mu.Unlock()
	log := c.log.With("run_id", run.ID)
	log.Info("pass started", "triggers", strings.Join(triggers, ", "))
	defer func() {
		run.Duration = time.Since(run.Started)
		c.record(run)
		log.Info("pass finished", "result", run.Result, "revision", short(run.Revision), "applied", short(run.Applied), "duration", run.Duration.Round(time.Millisecond), "err", run.Error)
		if c.opts.OnRun != nil {
			c.opts.OnRun(run)
		}
	}()
	converge := func(ctx context.Context, run *Run) error { return c.stepConverge(ctx, run, cleanSlate) }
	for _, step := range []func(context.Context, *Run) error{c.stepRevision, c.stepDesired, converge} {
		if err := step(ctx, &run); err != nil {
			if errors.Is(err, errStop) {
				return run
			}
			run.Result, run.Error = ResultError, err.Error()
			return run
		}
	}
	return run
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
	c.mu.Lock()
	c.status.Revision = run.Revision
	c.status.Ready = true
	c.mu.Unlock()
	return nil
}

// stepDesired loads and compiles the newest revision, unless it is the one
// already compiled or one that already failed validation. An invalid
// revision leaves the last good desired state in force.
func (c *Controller) stepDesired(ctx context.Context, run *Run) error {
	c.mu.Lock()
	st := c.status
	c.mu.Unlock()
	rev := run.Revision
	switch rev {
	case st.LastGood:
	case st.Invalid:
		run.Result = ResultInvalid
		run.Error = fmt.Sprintf("revision %s is invalid (not retried); %s", short(rev), lastGoodNote(st.LastGood))
		if run.Diagnostics = c.lastDiagnostics(rev); st.Desired == nil {
			return errStop
		}
	default:
		tree, err := c.opts.Source.Tree(rev)
		if err != nil {
			return err
		}
		lctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
		l, err := lab.LoadContext(lctx, tree, c.opts.Load)
		tooSlow := err != nil && lctx.Err() != nil
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("load revision %s: %w", short(rev), err)
		case tooSlow:
			// The revision itself is too much to load: remembered like an
			// invalid one, so it is not loaded again until a new commit.
			l.Diagnostics = append(l.Diagnostics, lab.Diagnostic{Severity: lab.SeverityError,
				Message: fmt.Sprintf("loading this revision took longer than %s; labsync does not try it again; make the lab smaller", c.opts.LoadTimeout)})
			err = &lab.ValidationError{Diagnostics: l.Diagnostics}
		}
		run.Diagnostics = l.Diagnostics
		var verr *lab.ValidationError
		if errors.As(err, &verr) {
			c.mu.Lock()
			c.status.Invalid = rev
			c.mu.Unlock()
			run.Result, run.Error = ResultInvalid, fmt.Sprintf("revision %s is invalid: %s; %s", short(rev), strings.TrimPrefix(err.Error(), "invalid lab: "), lastGoodNote(st.LastGood))
			if st.Desired == nil {
				return errStop
			}
			break
		}
		if err != nil {
			return err
		}
		d := lab.Compile(l, lab.CompileOptions{Revision: rev})
		c.mu.Lock()
		c.status.Lab, c.status.Desired, c.status.LastGood, c.status.Invalid = d.Lab, d, rev, ""
		c.mu.Unlock()
		c.watch(d.Lab)
	}
	return nil
}

func lastGoodNote(lastGood string) string {
	if lastGood == "" {
		return "nothing is applied until a valid revision arrives"
	}
	return "the host stays at " + short(lastGood)
}

func (c *Controller) lastDiagnostics(rev string) lab.Diagnostics {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.runs {
		if r.Revision == rev && len(r.Diagnostics) > 0 {
			return r.Diagnostics
		}
	}
	return nil
}

// stepConverge observes the host, plans against the desired state in force
// and applies the plan.
func (c *Controller) stepConverge(ctx context.Context, run *Run, cleanSlate bool) error {
	c.mu.Lock()
	desired := c.status.Desired
	c.mu.Unlock()
	run.Applied = desired.Revision
	obs, err := c.opts.Docker.Observe(ctx, desired.Lab)
	if err != nil {
		return err
	}
	opts := PlanOptions{ForcePrune: c.opts.ForcePrune, Adopt: c.opts.Adopt}
	if cleanSlate {
		opts.Recreate = c.idleAgents(ctx, desired)
	}
	plan, err := PlanHost(ctx, desired, obs, opts, c.opts.Docker.Foreign)
	if err != nil {
		return err
	}
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
		aopts.ForceBusy = c.busyExpired(desired, plan)
		if c.opts.AgentIdle != nil && desired.TestflingerServer != "" {
			aopts.ServerBusy = func(ctx context.Context, agent string) (bool, error) {
				idle, err := c.opts.AgentIdle(ctx, desired, agent)
				return !idle, err
			}
		}
		report := Apply(ctx, c.opts.Docker, plan, aopts)
		run.Results = report.Results
		c.trackBusy(report.Results)
		if d := report.Deferred(); len(d) > 0 {
			run.Error = fmt.Sprintf("%d change(s) wait for a job to end or a device to be free: %s", len(d), strings.Join(d, ", "))
		}
		run.actionsFailed = report.Failed() > 0
		if report.Failed() > 0 && run.Result == ResultOK {
			run.Result = ResultFailed
			run.Error = fmt.Sprintf("%d of %d action(s) did not succeed", report.Failed(), len(report.Results))
		}
		if obs, err = c.opts.Docker.Observe(ctx, desired.Lab); err != nil {
			return err
		}
		// What still differs after the apply: the drift status shows.
		if plan, err = PlanHost(ctx, desired, obs, PlanOptions{ForcePrune: c.opts.ForcePrune}, c.opts.Docker.Foreign); err != nil {
			return err
		}
	}

	if plan.Empty() {
		c.trackBusy(nil) // nothing waits any more
	}
	c.setObserved(ctx, obs)
	c.mu.Lock()
	c.status.Plan = plan
	for _, r := range run.Results {
		key := r.Action.ObjectKind + "/" + r.Action.Object
		if r.Status == StatusOK {
			delete(c.status.LastErrors, key)
		} else {
			c.status.LastErrors[key] = r.Error
		}
	}
	if run.Result == ResultOK {
		c.status.LastOK = time.Now()
	}
	c.mu.Unlock()
	return nil
}

// busyRecord is a change that waits for an agent's job: what it would
// make (the spec hash; the target for stops and removals) and since when.
type busyRecord struct {
	change string
	since  time.Time
}

// changeOf names what an action would make, so that a busy record
// belongs to one change.
func changeOf(a *Action) string {
	if a.Spec != nil {
		return string(a.Kind) + " " + a.Spec.Hash
	}
	return string(a.Kind) + " " + a.Target
}

// busyExpired lists the agents whose pending change, the one in plan, has
// waited longer than the lab's busy timeout for a job to end, when the
// policy is to recreate them then.
func (c *Controller) busyExpired(d *lab.Desired, plan *Changeset) map[string]bool {
	out := map[string]bool{}
	if d.Update.BusyPolicy != lab.BusyPolicyRecreate {
		return out
	}
	for i := range plan.Actions {
		a := &plan.Actions[i]
		key := a.ObjectKind + "/" + a.Object
		rec, ok := c.busySince[key]
		if !ok || rec.change != changeOf(a) || time.Since(rec.since) < d.Update.BusyTimeout {
			continue
		}
		out[a.Object] = true
		c.log.Warn("agent busy for longer than busy_timeout; recreating it anyway", "object", key, "waited", time.Since(rec.since).Round(time.Second))
	}
	return out
}

// trackBusy remembers since when each change deferred for a job waits;
// every other record is forgotten: its change went through, was reverted
// or replaced by another (which waits afresh).
func (c *Controller) trackBusy(results []Result) {
	waiting := map[string]string{}
	for i := range results {
		r := &results[i]
		if r.Status != StatusDeferred || r.WaitsFor != WaitJob {
			continue
		}
		key := r.Action.ObjectKind + "/" + r.Action.Object
		waiting[key] = changeOf(&r.Action)
		if rec, ok := c.busySince[key]; !ok || rec.change != waiting[key] {
			c.busySince[key] = busyRecord{change: waiting[key], since: time.Now()}
		}
	}
	for key := range c.busySince {
		if _, ok := waiting[key]; !ok {
			delete(c.busySince, key)
		}
	}
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

func (c *Controller) record(run Run) {
	c.mu.Lock()
	c.status.Passing = false
	r := run
	c.status.LastRun = &r
	c.runs = append([]Run{run}, c.runs...)
	if len(c.runs) > c.opts.History {
		c.runs = c.runs[:c.opts.History]
	}
	c.mu.Unlock()
	for _, res := range run.Results {
		e := Event{Time: time.Now(), Type: "action", Object: res.Action.ObjectKind + "/" + res.Action.Object,
			Message: fmt.Sprintf("%s %s: %s", res.Action.Kind, res.Action.Target, res.Status), Error: res.Status != StatusOK && res.Status != StatusDeferred}
		if res.Error != "" {
			e.Message += ": " + res.Error
		}
		c.emit(e)
	}
	c.emit(Event{Time: time.Now(), Type: "pass", Message: fmt.Sprintf("pass %d %s at %s (%s)", run.ID, run.Result, short(run.Revision), strings.Join(run.Triggers, ", ")), Error: run.Result == ResultError || run.Result == ResultFailed || run.Result == ResultInvalid})
	c.notify()
}

func (c *Controller) emit(e Event) {
	c.mu.Lock()
	sinks := c.eventSinks
	c.mu.Unlock()
	for _, f := range sinks {
		f(e)
	}
}

func (c *Controller) notify() {
	c.mu.Lock()
	sinks := c.stateSinks
	c.mu.Unlock()
	if len(sinks) == 0 {
		return
	}
	st := c.Status()
	for _, f := range sinks {
		f(st)
	}
}

// AddSinks adds receivers of status changes and events, besides OnState
// and OnEvent.
func (c *Controller) AddSinks(state func(LabStatus), event func(Event)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if state != nil {
		c.stateSinks = append(c.stateSinks, state)
	}
	if event != nil {
		c.eventSinks = append(c.eventSinks, event)
	}
}

// setObserved records what the host runs, marks the agents whose device is
// offline, and auto-heals unhealthy agents when asked to.
func (c *Controller) setObserved(ctx context.Context, obs *runtime.Observed) {
	offline := map[string]bool{}
	for _, o := range obs.Containers {
		if o.Kind != lab.KindAgent || o.Health != "unhealthy" || o.Aside {
			continue
		}
		if a, err := c.opts.Docker.AgentActivity(ctx, o.ID); err == nil && a.Offline {
			offline[o.Object] = true
			continue
		}
		c.autoHeal(ctx, o)
	}
	c.mu.Lock()
	c.status.Observed = obs
	c.status.Offline = offline
	c.mu.Unlock()
}

// autoHeal restarts an agent that failed enough healthchecks in a row,
// within its restart budget. Each restart, and each refusal, is an event.
func (c *Controller) autoHeal(ctx context.Context, o runtime.ObservedContainer) {
	ah := c.opts.AutoHeal
	if ah.After <= 0 {
		return
	}
	streak, err := c.opts.Docker.FailingStreak(ctx, o.ID)
	if err != nil || streak < ah.After {
		return
	}
	key := "agent/" + o.Object
	if a, err := c.opts.Docker.AgentActivity(ctx, o.ID); err == nil && a.Busy {
		return // its job may be quiet; Docker's check alone is not enough to kill it
	}
	if !c.heals.Allow(key, time.Now()) {
		c.emit(Event{Time: time.Now(), Type: "auto-heal", Object: key, Error: true,
			Message: fmt.Sprintf("%s is unhealthy (%d failed checks) but was restarted %d times within %s already; not restarting it again", o.Name, streak, ah.Max, ah.Window)})
		return
	}
	err = c.opts.Docker.RestartContainer(ctx, o.ID, c.opts.Apply.StopTimeout)
	e := Event{Time: time.Now(), Type: "auto-heal", Object: key, Message: fmt.Sprintf("restarted %s after %d failed healthchecks in a row", o.Name, streak)}
	if err != nil {
		e.Message, e.Error = fmt.Sprintf("restart of unhealthy %s failed: %v", o.Name, err), true
	}
	c.log.Warn("auto-heal", "object", key, "streak", streak, "err", err)
	c.emit(e)
}

// refresher re-observes the host whenever an event asks, coalescing bursts,
// so published state follows containers within seconds, between passes.
func (c *Controller) refresher(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.refresh:
		}
		c.mu.Lock()
		d := c.status.Desired
		c.mu.Unlock()
		if d == nil {
			continue
		}
		obs, err := c.opts.Docker.Observe(ctx, d.Lab)
		if err != nil {
			c.log.Warn("refresh of the observed state failed", "err", err)
			continue
		}
		// Between passes only: a pass under way is changing containers.
		if c.passMu.TryLock() {
			c.setObserved(ctx, obs)
			c.passMu.Unlock()
		} else {
			c.mu.Lock()
			c.status.Observed = obs
			c.mu.Unlock()
		}
		c.log.Debug("observed state refreshed", "containers", len(obs.Containers))
		c.notify()
	}
}

// Refresh asks for the observed state to be read again soon; it never
// blocks.
func (c *Controller) Refresh() {
	select {
	case c.refresh <- struct{}{}:
	default:
	}
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
			c.emit(e)
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

// Emit publishes an event from outside the controller (commands, submits).
func (c *Controller) Emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	c.emit(e)
}

// FlapLimiter drops events of an object that triggered more than Max
// passes within Window, so a crash-looping container cannot keep the
// controller busy.
type FlapLimiter struct {
	Max    int
	Window time.Duration

	mu   sync.Mutex
	seen map[string][]time.Time
}

// Allow reports whether an event of object at now may trigger a pass.
func (f *FlapLimiter) Allow(object string, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = map[string][]time.Time{}
	}
	recent := f.seen[object][:0]
	for _, t := range f.seen[object] {
		if now.Sub(t) < f.Window {
			recent = append(recent, t)
		}
	}
	if len(recent) >= f.Max {
		f.seen[object] = recent
		return false
	}
	f.seen[object] = append(recent, now)
	return true
}

// watch (re)opens the event stream for labName. Only Run's goroutine
// calls it.
func (c *Controller) watch(labName string) {
	if c.opts.Events == nil || c.runCtx == nil || labName == c.watching {
		return
	}
	if c.stopWatcher != nil {
		c.stopWatcher()
	}
	ctx, cancel := context.WithCancel(c.runCtx)
	c.watching, c.stopWatcher = labName, cancel
	limit := c.opts.FlapLimit
	if limit == nil {
		limit = &FlapLimiter{Max: 5, Window: 10 * time.Minute}
	}
	go c.WatchEvents(c.opts.Events(ctx, labName), limit)
}

// WatchEvents refreshes the observed state on each event of a managed
// container, and triggers a pass for each die, destroy or unhealthy event
// within the flap limit, until events closes.
func (c *Controller) WatchEvents(events <-chan runtime.Event, limit *FlapLimiter) {
	for e := range events {
		c.Refresh()
		if e.Action == "start" || e.Action == "stop" || e.Action == "health_status: healthy" || e.Action == "health_status: starting" {
			continue // nothing to repair
		}
		// During a pass it is most likely the pass's own doing: one more
		// pass checks after it, unless it failed and waits for its retry
		// (a failed takeover makes events; it must not run again at once,
		// past its backoff). Such events do not count against the flap
		// limit, which is for containers that crash on their own.
		c.mu.Lock()
		inPass := c.status.Passing
		if inPass {
			c.eventsInPass = true
		}
		c.mu.Unlock()
		if inPass {
			continue
		}
		key := e.Kind + "/" + e.Object
		if !limit.Allow(key, time.Now()) {
			c.log.Warn("event ignored: flap limit reached", "object", key, "action", e.Action)
			continue
		}
		c.Trigger(fmt.Sprintf("docker: %s %s", e.Name, e.Action))
	}
}

// SortedErrors returns the last error of each object, sorted by object.
func (s LabStatus) SortedErrors() [][2]string {
	keys := make([]string, 0, len(s.LastErrors))
	for k := range s.LastErrors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][2]string, len(keys))
	for i, k := range keys {
		out[i] = [2]string{k, s.LastErrors[k]}
	}
	return out
}
