package reconciler

import (
	"context"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// A controller is a few parts, each in its own file: the trigger queue
// (queue.go) that coalesces triggers; the pass (pass.go), a fixed
// skeleton of steps that reads the revision, compiles the desired state,
// and observes, plans and applies; the status store (statusstore.go)
// that the sinks read; the event watch (watch.go) that refreshes the
// observed state and triggers passes; auto-heal and the restart command
// (heal.go); and the busy records of changes that wait for jobs
// (busy.go). The loop below ties them together.

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
	DriftInspector
	Observe(ctx context.Context, labName string) (*runtime.Observed, error)
	Ping(ctx context.Context) error
	RestartContainer(ctx context.Context, id string, timeout time.Duration) error
	Foreign(ctx context.Context, o runtime.ForeignOptions) (*runtime.Foreign, error)
	LabsOf(ctx context.Context, source string) (map[string]int, error)
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
	// ForcePrune lets the first pass that plans remove orphans past the
	// prune guard; later passes are guarded again.
	ForcePrune bool
	// AgentMQTTDir, when set, says where the embedded broker's agents'
	// socket is for a pass about to apply the desired state ("" when
	// there is none): new agent containers that name no broker get it
	// (see ApplyOptions.AgentMQTTDir).
	AgentMQTTDir func(*lab.Desired) string
	// Adopt takes over the containers, volumes and networks labsync did
	// not make that stand in its way (the old stack's), in every pass: see
	// PlanOptions.Adopt. It is meant for the takeover; drop it after.
	Adopt bool
	// Identity is the lab's repository (NormalSource of its URL): stamped
	// on every container the controller makes, and checked against the
	// containers of the lab's name (see IdentityError). Empty: not
	// checked.
	Identity string
	// IdentityFile, when set, is where the controller records the lab's
	// name and repositories, so that a renamed lab is noticed.
	IdentityFile string
	// AdoptLab is an old name of the lab (or its own name, after its
	// repository moved): the containers of that name are taken over,
	// replaced stop-first by this lab's.
	AdoptLab string
	Apply    ApplyOptions
	Logger   *slog.Logger
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
	// FailedRetry is how long a create or recreate that failed is not
	// tried again while its inputs stay the same (default
	// DefaultFailedRetry); each failure doubles it, up to MaxFailedRetry.
	FailedRetry time.Duration
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

// Retry times of failed changes (see ControllerOptions.FailedRetry).
const (
	DefaultFailedRetry = 2 * time.Minute
	MaxFailedRetry     = 2 * time.Hour
)

// Controller runs passes: one at a time, whenever triggered, coalescing
// triggers that arrive during a pass into exactly one more pass.
type Controller struct {
	opts   ControllerOptions
	log    *slog.Logger
	queue  *triggerQueue
	store  *statusStore
	busy   *busyTracker
	failed *failedChanges
	healer *healer

	runCtx      context.Context
	watching    string
	stopWatcher context.CancelFunc

	refresh chan struct{}
	// passMu is held by a pass; auto-heal outside a pass takes it too, so
	// it never restarts a container a pass is replacing.
	passMu sync.Mutex
	// failures counts the failed passes in a row. Only Run's goroutine
	// uses it.
	failures int
	// drift is what the last deep drift check found; reused until the
	// next one (a drift holds only for the container inspected). Only
	// Run's goroutine uses it.
	drift map[string]Drift
	// identityChecked is the lab name checkIdentity passed; adoptFrom the
	// old name whose containers are being taken over. Only Run's
	// goroutine uses them.
	identityChecked string
	adoptFrom       string
	record          labRecord
	// forcePrune is ControllerOptions.ForcePrune until a pass has planned
	// with it. Only Run's goroutine uses it.
	forcePrune bool
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
	if opts.FailedRetry == 0 {
		opts.FailedRetry = DefaultFailedRetry
	}
	if opts.LoadTimeout == 0 {
		opts.LoadTimeout = 2 * time.Minute
	}
	if opts.Apply.StopTimeout <= 0 {
		opts.Apply.StopTimeout = DefaultStopTimeout
	}
	opts.Load.DefaultName = opts.DefaultName
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Controller{opts: opts, log: opts.Logger, forcePrune: opts.ForcePrune, queue: newTriggerQueue(), store: newStatusStore(opts.DefaultName, opts.History),
		busy: newBusyTracker(), failed: newFailedChanges(opts.FailedRetry, max(opts.FailedRetry, MaxFailedRetry)), refresh: make(chan struct{}, 1)}
	c.healer = newHealer(opts.Docker, opts.AutoHeal, opts.Apply.StopTimeout, c.store.emit, opts.Logger)
	c.AddSinks(opts.OnState, opts.OnEvent)
	return c
}

// Trigger asks for a pass. It never blocks; a trigger during a pass causes
// exactly one more pass, whatever the number of triggers.
func (c *Controller) Trigger(reason string) { c.queue.add(reason) }

// TriggerCleanSlate asks for a pass that also recreates every agent that is
// in sync and idle, so each starts from a fresh container.
func (c *Controller) TriggerCleanSlate(reason string) { c.queue.addCleanSlate(reason) }

// TriggerDriftCheck asks for a pass that also inspects each managed
// container and compares it with its spec field by field (DeepDrift), so
// that hand changes that keep the labels are found and corrected.
func (c *Controller) TriggerDriftCheck(reason string) { c.queue.addDriftCheck(reason) }

// Sync asks for a pass that also tries again the changes that failed
// before, without waiting for their retry time: an operator's request.
func (c *Controller) Sync(reason string) { c.queue.addSync(reason) }

// Status returns a copy of the controller's status.
func (c *Controller) Status() LabStatus { return c.store.get() }

// Runs returns the recent passes, newest first.
func (c *Controller) Runs() []Run { return c.store.recent() }

// AddSinks adds receivers of status changes and events, besides OnState
// and OnEvent.
func (c *Controller) AddSinks(state func(LabStatus), event func(Event)) {
	c.store.addSinks(state, event)
}

// Emit publishes an event from outside the controller (commands, submits).
func (c *Controller) Emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	c.store.emit(e)
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
		case <-c.queue.wake:
		case <-poll:
			c.queue.note("poll")
			resetPoll()
		case <-retry:
			c.queue.note("retry")
		case <-recheck:
			c.queue.note("busy agent re-check")
			recheck = nil
		}
		req := c.queue.take()
		if len(req.reasons) == 0 {
			continue // a spare wake-up: a pending retry stays pending
		}
		retry = nil
		run := c.pass(ctx, req)
		if ctx.Err() != nil {
			return nil
		}
		eventsInPass := c.queue.takeEventsInPass()
		if run.Result == ResultError && !run.applied {
			c.queue.keep(req) // its retry does what it was asked to
		}
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
		if c.busy.waiting() && recheck == nil {
			recheck = time.After(c.opts.BusyRecheck)
		}
	}
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
