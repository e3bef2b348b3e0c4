package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Engine is what Apply needs of a container engine; runtime.Client is the
// real one.
type Engine interface {
	CreateNetwork(ctx context.Context, labName string, n lab.NetworkSpec) error
	RemoveNetwork(ctx context.Context, id string) error
	CreateVolume(ctx context.Context, labName string, v lab.VolumeSpec) error
	AdoptVolume(ctx context.Context, name string) error
	AdoptNetwork(ctx context.Context, name string) error
	BuildImage(ctx context.Context, labName string, img lab.ImageSpec) error
	CreateContainer(ctx context.Context, spec *lab.ContainerSpec, opts runtime.CreateOptions) (string, error)
	StartContainer(ctx context.Context, id string) error
	StopContainer(ctx context.Context, id string, timeout time.Duration) error
	RenameContainer(ctx context.Context, id, name string) error
	RemoveContainer(ctx context.Context, id string) error
	WaitRunning(ctx context.Context, id string, o runtime.WaitOptions) error
	SetRestartPolicy(ctx context.Context, id, policy string) error
	Preflight(ctx context.Context, spec *lab.ContainerSpec, asideName string) error
	AgentActivity(ctx context.Context, id string) (runtime.Activity, error)
	// AgentBinaryVolume and PruneAgentBinaryVolumes manage the volume
	// that gives agent containers labsync-agent.
	AgentBinaryVolume(ctx context.Context, labName, path string) (*runtime.AgentBinary, error)
	PruneAgentBinaryVolumes(ctx context.Context, labName, keep string) error
}

var _ Engine = (*runtime.Client)(nil)

// Status is the outcome of one action.
type Status string

// Outcomes.
const (
	StatusOK          Status = "ok"
	StatusFailed      Status = "failed"
	StatusRolledBack  Status = "rolled-back"
	StatusSkipped     Status = "skipped"
	StatusInterrupted Status = "interrupted"
	// StatusDeferred: the agent runs a job; the change waits for it.
	StatusDeferred Status = "deferred"
)

// Result is what became of one action.
type Result struct {
	Action Action `json:"action"`
	Status Status `json:"status"`
	Error  string `json:"error,omitempty"`
	// WaitsFor says what a deferred action waits for: WaitJob or
	// WaitDevice.
	WaitsFor string        `json:"waits_for,omitempty"`
	Duration time.Duration `json:"duration_ns"`

	order int // the action's place in the plan
}

// Report is the outcome of an apply.
type Report struct {
	Lab      string        `json:"lab"`
	Revision string        `json:"revision"`
	Results  []Result      `json:"results"`
	Duration time.Duration `json:"duration_ns"`
}

// Failed returns the number of actions that did not succeed, deferred
// ones excluded.
func (r *Report) Failed() int {
	n := 0
	for _, res := range r.Results {
		if res.Status != StatusOK && res.Status != StatusDeferred {
			n++
		}
	}
	return n
}

// What a deferred action waits for.
const (
	// WaitJob: the agent runs a job.
	WaitJob = "job"
	// WaitDevice: another container still drives the device.
	WaitDevice = "device"
)

// Deferred returns the objects whose change waits for a job to end or a
// device to be free.
func (r *Report) Deferred() []string {
	var out []string
	for _, res := range r.Results {
		if res.Status == StatusDeferred {
			out = append(out, res.Action.ObjectKind+"/"+res.Action.Object)
		}
	}
	return out
}

// Step names a point inside an action, reported to ApplyOptions.OnStep.
type Step string

// Steps of container actions.
const (
	StepStopped   Step = "stopped"
	StepSetAside  Step = "set-aside"
	StepCreated   Step = "created"
	StepStarted   Step = "started"
	StepUp        Step = "up"
	StepRemoved   Step = "removed"
	StepRollback  Step = "rolled-back"
	StepBuilt     Step = "built"
	StepRestored  Step = "restored"
	StepLeftovers Step = "leftovers-removed"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Parallelism caps concurrent agent actions; 0 uses the lab's setting.
	Parallelism int
	// StopTimeout is how long a container gets to stop before it is
	// killed, in whole seconds (rounded up); 0 means DefaultStopTimeout.
	// It must not be negative: the stops fail.
	StopTimeout time.Duration
	Logger      *slog.Logger
	// OnStep, when set, is called after each step of each action, from
	// the goroutine doing it: for progress output.
	OnStep func(a *Action, step Step)
	// OnResult, when set, is called as each action ends.
	OnResult func(r Result)
	// IgnoreBusy recreates and removes agents even while they run a job.
	// Otherwise such a change is deferred, unless the object is in
	// ForceBusy (its wait for the job ran out and the policy says
	// recreate).
	IgnoreBusy bool
	ForceBusy  map[string]bool
	// ServerBusy, when set, asks the Testflinger server whether an agent
	// without a labsync-agent heartbeat runs a job.
	ServerBusy func(ctx context.Context, agent string) (bool, error)
	// AgentBinary is the static labsync-agent binary that every new agent
	// container gets, read-only at lab.AgentBinDir, from a volume filled
	// once per binary. Empty: none; an agent that runs it from there must
	// then find it in its image.
	AgentBinary string
	// Source, when set, is stamped on new containers as their lab's
	// repository (runtime.LabelSource).
	Source string
	// AgentMQTTDir, when set, gives agent containers whose environment
	// names no broker the embedded broker's agents' socket (see
	// runtime.CreateOptions).
	AgentMQTTDir string
}

// DefaultStopTimeout is Docker's own default grace period.
const DefaultStopTimeout = 10 * time.Second

// Apply carries out a plan: networks, volumes, images, then services in
// dependency order, then agents in parallel, then removals. One action's
// failure never stops the others. A failed recreate restores the old
// container. If ctx ends mid-action the action is reported interrupted and
// the host is left in a state the next plan repairs.
func Apply(ctx context.Context, eng Engine, p *Changeset, opts ApplyOptions) *Report {
	start := time.Now()
	a := &applier{eng: eng, plan: p, opts: opts, broken: map[string]string{}, serviceDone: map[string]Status{},
		devices: newDeviceLedger(p.devices), releaseFirst: map[int]bool{}, lastWait: map[int]*deviceWait{}}
	if a.opts.Logger == nil {
		a.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if a.opts.StopTimeout == 0 {
		a.opts.StopTimeout = DefaultStopTimeout
	}
	if a.opts.Parallelism <= 0 {
		a.opts.Parallelism = max(p.desired.Update.Parallelism, 1)
	}
	// Agents are created, changed and removed in parallel; everything else
	// runs in plan order.
	var batch []int
	batchPhase := -1
	for i := range p.Actions {
		act := &p.Actions[i]
		ph := phase(*act)
		parallel := ph == phaseAgents || (ph == phaseRemovals && act.ObjectKind == string(lab.KindAgent))
		if len(batch) > 0 && (!parallel || ph != batchPhase) {
			a.runRounds(ctx, batch)
			batch = nil
		}
		if parallel {
			batch, batchPhase = append(batch, i), ph
			continue
		}
		a.runRounds(ctx, []int{i})
	}
	if len(batch) > 0 {
		a.runRounds(ctx, batch)
	}
	a.pruneAgentBinaries(ctx)
	sort.SliceStable(a.results, func(i, j int) bool { return a.results[i].order < a.results[j].order })
	return &Report{Lab: p.Lab, Revision: p.Revision, Results: a.results, Duration: time.Since(start)}
}

type applier struct {
	eng  Engine
	plan *Changeset
	opts ApplyOptions

	mu      sync.Mutex
	results []Result
	// broken maps images, networks and volumes that could not be made to
	// the error, so the containers that need them are skipped.
	broken      map[string]string
	serviceDone map[string]Status
	// devices says which containers hold each device.
	devices *deviceLedger
	// releaseFirst marks recreates that stop their old container before
	// their device is free: two agents that swap devices wait for each
	// other otherwise. Only runRounds' goroutine writes it, between rounds.
	releaseFirst map[int]bool
	// lastWait is what each waiting action waited for in its last round.
	lastWait map[int]*deviceWait

	// agentBin is the labsync-agent volume of this apply, made at the
	// first agent create.
	agentBinOnce sync.Once
	agentBin     *runtime.AgentBinary
	agentBinErr  error
}

// runRounds runs actions, in parallel up to Parallelism, in rounds: an
// action whose device another container holds waits, and runs again after
// a round that freed a device. What still waits when no round can free
// one more is deferred.
func (a *applier) runRounds(ctx context.Context, idx []int) {
	waiting := idx
	for round := 0; round <= len(idx)+1; round++ {
		before := a.devices.releases()
		waits := a.runParallel(ctx, waiting)
		if len(waits) == 0 {
			return
		}
		waiting = waiting[:0:0]
		for i := range waits {
			waiting = append(waiting, i)
		}
		sort.Ints(waiting)
		if a.devices.releases() > before {
			continue
		}
		if i, ok := a.breakCycle(waiting, waits); ok {
			a.releaseFirst[i] = true
			continue
		}
		break
	}
	// Deferred, in plan order.
	for _, i := range waiting {
		act := &a.plan.Actions[i]
		a.record(act, Result{Action: *act, Status: StatusDeferred, WaitsFor: WaitDevice, Error: "waits: " + a.lastWait[i].Error(), order: i})
	}
}

// breakCycle picks, among actions that wait for each other's devices (two
// agents swapping devices), the first recreate whose old container holds
// a device another waiting action needs and that itself waits for the old
// container of another waiting recreate: stopped first, it lets the other
// go.
func (a *applier) breakCycle(waiting []int, waits map[int]*deviceWait) (int, bool) {
	oldOf := map[string]int{} // old container ID → its waiting recreate
	for _, i := range waiting {
		act := &a.plan.Actions[i]
		if (act.Kind == Recreate || act.Kind == Adopt) && act.Old != nil && !act.Old.Aside {
			oldOf[act.Old.ID] = i
		}
	}
	for _, i := range waiting {
		act := &a.plan.Actions[i]
		if act.Old == nil || a.releaseFirst[i] {
			continue
		}
		if j, isRecreate := oldOf[act.Old.ID]; !isRecreate || j != i {
			continue
		}
		blockedByRecreate := true
		for _, k := range waits[i].keys {
			if j, ok := oldOf[k]; !ok || j == i {
				blockedByRecreate = false
			}
		}
		needed := false
		for _, j := range waiting {
			if j != i && slices.Contains(waits[j].keys, a.plan.Actions[i].Old.ID) {
				needed = true
			}
		}
		if blockedByRecreate && needed {
			return i, true
		}
	}
	return 0, false
}

// runParallel runs actions and returns those that wait for a device.
func (a *applier) runParallel(ctx context.Context, idx []int) map[int]*deviceWait {
	sem := make(chan struct{}, a.opts.Parallelism)
	var wg sync.WaitGroup
	var mu sync.Mutex
	waits := map[int]*deviceWait{}
	for _, i := range idx {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			defer a.recoverAction(i)
			if w := a.run(ctx, i); w != nil {
				mu.Lock()
				waits[i] = w
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	for i, w := range waits {
		a.lastWait[i] = w
	}
	return waits
}

// recoverAction turns a panic in action i into its failure, so that it
// ends the action and not the daemon. What the action claimed stays
// claimed: its device is held until the next plan looks again.
func (a *applier) recoverAction(i int) {
	p := recover()
	if p == nil {
		return
	}
	act := &a.plan.Actions[i]
	a.opts.Logger.Error("action panicked", "object", act.Object, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	a.record(act, Result{Action: *act, Status: StatusFailed, Error: fmt.Sprintf("internal error, the action was abandoned (please report it): %v", p), order: i})
}

func (a *applier) step(act *Action, s Step) {
	if a.opts.OnStep != nil {
		a.opts.OnStep(act, s)
	}
}

// run runs one action and records its result, unless it has to wait for
// a device: then it returns what it waits for, and records nothing.
func (a *applier) run(ctx context.Context, i int) *deviceWait {
	act := &a.plan.Actions[i]
	start := time.Now()
	res := Result{Action: *act, Status: StatusOK, order: i}
	var err error
	if skip := a.skipReason(act); skip != "" {
		res.Status, res.Error = StatusSkipped, skip
	} else if ctx.Err() != nil {
		res.Status, res.Error = StatusInterrupted, "apply was cancelled before this action started"
	} else {
		res.Status, err = a.do(ctx, act, a.releaseFirst[i])
		var w *deviceWait
		if errors.As(err, &w) && res.Status == StatusDeferred {
			return w
		}
		if err != nil {
			res.Error = err.Error()
		}
		if res.Status == StatusDeferred {
			res.WaitsFor = WaitJob
		}
	}
	res.Duration = time.Since(start)
	a.record(act, res)
	return nil
}

// record logs and keeps an action's result.
func (a *applier) record(act *Action, res Result) {
	log := a.opts.Logger.With("action", string(act.Kind), "object", act.Object, "target", act.Target)
	switch res.Status {
	case StatusOK:
		log.Info("action done", "duration", res.Duration.Round(time.Millisecond))
	default:
		log.Warn("action not done", "status", string(res.Status), "err", res.Error)
	}
	a.mu.Lock()
	a.results = append(a.results, res)
	if (act.Kind == BuildImage || act.Kind == CreateNetwork || act.Kind == CreateVolume) && res.Status != StatusOK {
		a.broken[act.Target] = res.Error
	}
	if act.ObjectKind == string(lab.KindService) && act.Spec != nil {
		a.serviceDone[act.Object] = res.Status
	}
	a.mu.Unlock()
	if a.opts.OnResult != nil {
		a.opts.OnResult(res)
	}
}

// skipReason says why an action cannot run because another failed.
func (a *applier) skipReason(act *Action) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if act.Spec == nil {
		return ""
	}
	if msg, failed := a.broken[act.Spec.BuildTag]; failed && act.Spec.BuildTag != "" {
		return fmt.Sprintf("image %s was not built: %s", act.Spec.BuildTag, msg)
	}
	for _, n := range act.Spec.Networks {
		if msg, failed := a.broken[n.Network]; failed {
			return fmt.Sprintf("network %s was not created: %s", n.Network, msg)
		}
	}
	for _, m := range act.Spec.Mounts {
		if msg, failed := a.broken[m.Source]; failed && m.Type == "volume" {
			return fmt.Sprintf("volume %s was not created: %s", m.Source, msg)
		}
	}
	for _, d := range act.Spec.DependsOn {
		if st, ok := a.serviceDone[d.Name]; ok && st != StatusOK {
			return fmt.Sprintf("depends on %s, which was not brought up (%s)", d.Name, st)
		}
	}
	return ""
}

func (a *applier) do(ctx context.Context, act *Action, releaseFirst bool) (Status, error) {
	// Changes that end a running agent wait for its job. A busy orphan
	// keeps its device in the ledger: the agent that takes it waits too.
	if act.Kind == Recreate || act.Kind == Adopt || act.Kind == Remove || act.Kind == Stop {
		if deferred, why := a.busy(ctx, act); deferred {
			return StatusDeferred, errors.New(why)
		}
	}
	switch act.Kind {
	case CreateNetwork:
		return done(a.eng.CreateNetwork(ctx, a.plan.Lab, *act.Network))
	case CreateVolume:
		return done(a.eng.CreateVolume(ctx, a.plan.Lab, *act.Volume))
	case AdoptVolume:
		return done(a.eng.AdoptVolume(ctx, act.Target))
	case AdoptNetwork:
		return done(a.eng.AdoptNetwork(ctx, act.Target))
	case BuildImage:
		err := a.eng.BuildImage(ctx, a.plan.Lab, *act.Image)
		if err == nil {
			a.step(act, StepBuilt)
		}
		return done(err)
	case RemoveNetwork:
		return done(a.eng.RemoveNetwork(ctx, act.NetworkID))
	case Remove:
		return a.remove(ctx, act)
	case Create:
		return a.create(ctx, act)
	case Start:
		return a.start(ctx, act)
	case Recreate, Adopt:
		// A takeover is a recreate of a container labsync did not make.
		return a.recreate(ctx, act, releaseFirst)
	case Restore:
		return a.restore(ctx, act)
	case Finish:
		return a.finish(ctx, act)
	case Stop:
		if err := a.stopForGood(ctx, act.Old); err != nil {
			return a.failed(ctx, err)
		}
		a.step(act, StepStopped)
		return StatusOK, nil
	}
	return StatusFailed, fmt.Errorf("unknown action %q", act.Kind)
}

func done(err error) (Status, error) {
	if err != nil {
		return StatusFailed, err
	}
	return StatusOK, nil
}

func (a *applier) waitOptions(spec *lab.ContainerSpec) runtime.WaitOptions {
	u := a.plan.desired.Update
	return runtime.WaitOptions{
		Healthy:   spec.Healthcheck != nil && len(spec.Healthcheck.Test) > 0 && spec.Healthcheck.Test[0] != "NONE",
		MinUptime: u.MinUptime,
		Timeout:   u.StartTimeout,
	}
}

func (a *applier) createOpts() runtime.CreateOptions {
	return runtime.CreateOptions{Lab: a.plan.Lab, Revision: a.plan.Revision, Source: a.opts.Source, AgentMQTTDir: a.opts.AgentMQTTDir}
}

// agentBinary returns the labsync-agent volume for new agent containers,
// made once per apply; nil when no binary was given.
func (a *applier) agentBinary(ctx context.Context) (*runtime.AgentBinary, error) {
	if a.opts.AgentBinary == "" {
		return nil, nil
	}
	a.agentBinOnce.Do(func() {
		a.agentBin, a.agentBinErr = a.eng.AgentBinaryVolume(ctx, a.plan.Lab, a.opts.AgentBinary)
		if a.agentBinErr != nil {
			a.agentBinErr = fmt.Errorf("labsync-agent for agent containers: %w", a.agentBinErr)
		}
	})
	return a.agentBin, a.agentBinErr
}

// pruneAgentBinaries removes, best effort, the lab's labsync-agent volumes
// of other binaries once no container uses them.
func (a *applier) pruneAgentBinaries(ctx context.Context) {
	if a.agentBin == nil || ctx.Err() != nil {
		return
	}
	if err := a.eng.PruneAgentBinaryVolumes(ctx, a.plan.Lab, a.agentBin.Volume); err != nil {
		a.opts.Logger.Warn("old labsync-agent volumes not removed", "err", err)
	}
}

func (a *applier) removeLeftovers(ctx context.Context, act *Action) error {
	for _, c := range act.Leftovers {
		if mayRun(c.State) {
			// A duplicate that runs gets its grace to stop, as any agent.
			if err := a.stopForGood(ctx, &c); err != nil {
				return fmt.Errorf("stop leftover %s: %w", c.Name, err)
			}
		}
		if err := a.eng.RemoveContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("remove leftover %s: %w", c.Name, err)
		}
		a.devices.release(c.Device, c.ID)
	}
	if len(act.Leftovers) > 0 {
		a.step(act, StepLeftovers)
		act.Leftovers = nil
	}
	return nil
}

// stop stops a container and ends its hold of its device.
func (a *applier) stop(ctx context.Context, c *runtime.ObservedContainer) error {
	if err := a.eng.StopContainer(ctx, c.ID, a.opts.StopTimeout); err != nil {
		return err
	}
	a.devices.release(c.Device, c.ID)
	return nil
}

// stopForGood stops a container that is to stay stopped (until it is
// removed) with restart policy "no", so a daemon restart does not bring it
// back next to the agent that took its device. Policy first: a reboot
// between the two must not revive it.
func (a *applier) stopForGood(ctx context.Context, c *runtime.ObservedContainer) error {
	if err := a.eng.SetRestartPolicy(ctx, c.ID, "no"); err != nil {
		return err
	}
	return a.stop(ctx, c)
}

// claimFor claims device for the container c (an existing one) before it
// is started; own are containers of the same object that do not count.
func (a *applier) claimFor(c *runtime.ObservedContainer, own ...string) error {
	if w := a.devices.claim(c.Device, c.ID, c.Name, append(own, c.ID)...); w != nil {
		return w
	}
	return nil
}

func (a *applier) remove(ctx context.Context, act *Action) (Status, error) {
	if act.Old == nil { // leftovers only
		return done(a.removeLeftovers(ctx, act))
	}
	if err := a.stopForGood(ctx, act.Old); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepStopped)
	if err := a.eng.RemoveContainer(ctx, act.Old.ID); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepRemoved)
	return StatusOK, nil
}

// failed classifies an error: interrupted when the apply was cancelled,
// deferred when a device is not free yet.
func (a *applier) failed(ctx context.Context, err error) (Status, error) {
	var w *deviceWait
	if errors.As(err, &w) {
		return StatusDeferred, err
	}
	if ctx.Err() != nil {
		return StatusInterrupted, fmt.Errorf("interrupted: %w", err)
	}
	return StatusFailed, err
}

// bringUp creates, starts and watches a new container, which first
// claims its device. On failure the new container is removed and the
// claim ended.
func (a *applier) bringUp(ctx context.Context, act *Action, own ...string) (id string, err error) {
	key := newKey(act)
	if w := a.devices.claim(act.Spec.Device, key, act.Spec.ContainerName, own...); w != nil {
		return "", w
	}
	defer func() {
		if err != nil {
			a.devices.release(act.Spec.Device, key)
		}
	}()
	opts := a.createOpts()
	if act.Spec.Kind == lab.KindAgent {
		bin, err := a.agentBinary(ctx)
		if err != nil {
			return "", err
		}
		opts.AgentBinary = bin
	}
	id, err = a.eng.CreateContainer(ctx, act.Spec, opts)
	if err != nil {
		return "", err
	}
	a.step(act, StepCreated)
	err = a.eng.StartContainer(ctx, id)
	if err == nil {
		a.step(act, StepStarted)
		err = a.eng.WaitRunning(ctx, id, a.waitOptions(act.Spec))
	}
	if err != nil {
		if ctx.Err() == nil {
			cctx, cancel := cleanupContext(ctx)
			defer cancel()
			if rmErr := a.eng.RemoveContainer(cctx, id); rmErr != nil {
				// It may run still: its claim stays.
				a.devices.hold(act.Spec.Device, id, act.Spec.ContainerName)
				err = errors.Join(err, fmt.Errorf("remove failed container: %w", rmErr))
			}
		}
		return "", err
	}
	a.step(act, StepUp)
	return id, nil
}

func (a *applier) create(ctx context.Context, act *Action) (Status, error) {
	if err := a.removeLeftovers(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	if _, err := a.bringUp(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	return StatusOK, nil
}

func (a *applier) start(ctx context.Context, act *Action) (Status, error) {
	if err := a.removeLeftovers(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	if err := a.claimFor(act.Old); err != nil {
		return a.failed(ctx, err)
	}
	// A recreate cut short may have left it with restart policy "no",
	// which the labels do not show: it gets its spec's back first.
	if err := a.eng.SetRestartPolicy(ctx, act.Old.ID, act.Spec.Restart); err != nil {
		return a.failed(ctx, err)
	}
	if err := a.eng.StartContainer(ctx, act.Old.ID); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepStarted)
	if err := a.eng.WaitRunning(ctx, act.Old.ID, a.waitOptions(act.Spec)); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepUp)
	return StatusOK, nil
}

func (a *applier) restore(ctx context.Context, act *Action) (Status, error) {
	if err := a.removeLeftovers(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	if err := a.claimFor(act.Old); err != nil {
		return a.failed(ctx, err)
	}
	if err := a.putBack(ctx, act.Old.ID, act.Spec.ContainerName, act.Spec.Restart); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepRestored)
	if err := a.eng.StartContainer(ctx, act.Old.ID); err != nil {
		return a.failed(ctx, err)
	}
	if err := a.eng.WaitRunning(ctx, act.Old.ID, a.waitOptions(act.Spec)); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepUp)
	return StatusOK, nil
}

// busy says whether a change to a running agent must wait for its job to
// end, as the agent's labsync-agent heartbeat tells. An agent without one,
// or whose heartbeat cannot be read, is not waited for.
func (a *applier) busy(ctx context.Context, act *Action) (bool, string) {
	if a.opts.IgnoreBusy || act.Old == nil || act.Old.State != "running" || act.ObjectKind != string(lab.KindAgent) || a.opts.ForceBusy[act.Object] {
		return false, ""
	}
	activity, err := a.eng.AgentActivity(ctx, act.Old.ID)
	if err != nil {
		a.opts.Logger.Warn("agent activity unknown; not waiting for it", "object", act.Object, "err", err)
		return false, ""
	}
	if !activity.Known && a.opts.ServerBusy != nil {
		busy, err := a.opts.ServerBusy(ctx, act.Object)
		if err != nil {
			a.opts.Logger.Debug("agent activity unknown to the Testflinger server; not waiting for it", "object", act.Object, "err", err)
			return false, ""
		}
		if busy {
			return true, fmt.Sprintf("the Testflinger server says the agent runs a job; the %s waits until it ends", act.Kind)
		}
	}
	if !activity.Busy {
		return false, ""
	}
	return true, fmt.Sprintf("agent is running job %s (since %s); the %s waits until the job ends", activity.JobID, activity.Since.UTC().Format(time.RFC3339), act.Kind)
}

// cleanupContext gives clean-up and rollback steps a deadline of their own,
// so they run even when the apply was just cancelled.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// putBack gives a set-aside container its name and restart policy back.
func (a *applier) putBack(ctx context.Context, id, name, restart string) error {
	if err := a.eng.RenameContainer(ctx, id, name); err != nil {
		return err
	}
	return a.eng.SetRestartPolicy(ctx, id, restart)
}

// recreate replaces a container stop-first: two agents must never drive one
// device. What the new container needs is checked, and its device claimed,
// before the old one is touched. The old container gets restart policy
// "no", is stopped and set aside under a new name, and the new one is
// created and watched; if it fails, it is removed and the old one gets its
// name and policy back and starts (when its device is still free).
//
// With releaseFirst (two agents swapping devices) the old container is
// stopped and set aside before the new device is claimed; if the device
// is not free yet, the action waits with the old container set aside, and
// runs again from there.
func (a *applier) recreate(ctx context.Context, act *Action, releaseFirst bool) (Status, error) {
	old := act.Old
	aside := act.Spec.ContainerName + runtime.AsideSuffix
	if err := a.removeLeftovers(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	checkAside := aside
	if old.Aside {
		checkAside = ""
	}
	if err := a.eng.Preflight(ctx, act.Spec, checkAside); err != nil {
		return a.failed(ctx, fmt.Errorf("%w; the old container was left running", err))
	}
	if !releaseFirst && !old.Aside {
		// Claimed now, released below if the new container is not made.
		if w := a.devices.claim(act.Spec.Device, newKey(act), act.Spec.ContainerName, old.ID); w != nil {
			return StatusDeferred, w
		}
	}
	// Set aside first, then restart policy "no", then stop. Cut short at
	// any point, this leaves a set-aside container, which the next plan
	// finishes or restores (restart policy included); never a container
	// under its own name with policy "no", which no label shows. Policy
	// before the stop: a reboot after the stop must not revive it.
	orig, renamed := old, false
	if !old.Aside {
		if err := a.eng.RenameContainer(ctx, old.ID, aside); err != nil {
			a.devices.release(act.Spec.Device, newKey(act))
			return a.failed(ctx, fmt.Errorf("set aside: %w; the old container was left running", err))
		}
		a.step(act, StepSetAside)
		// From here on the action goes on from the set-aside container,
		// also in a later round.
		setAside := *old
		setAside.Name, setAside.Aside = aside, true
		act.Old, old, renamed = &setAside, &setAside, true
	}
	// putBackRunning undoes the set-aside of a container that still runs.
	putBackRunning := func(err error) error {
		if !renamed {
			return err
		}
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if perr := a.putBack(cctx, old.ID, orig.Name, act.Spec.Restart); perr != nil {
			return errors.Join(err, fmt.Errorf("put the old container back: %w; the next apply restores it", perr))
		}
		act.Old = orig
		return err
	}
	if err := a.eng.SetRestartPolicy(ctx, old.ID, "no"); err != nil {
		a.devices.release(act.Spec.Device, newKey(act))
		status, err := a.failed(ctx, err)
		return status, putBackRunning(fmt.Errorf("%w; the old container was left running", err))
	}
	if err := a.stop(ctx, old); err != nil {
		a.devices.release(act.Spec.Device, newKey(act))
		status, err := a.failed(ctx, err)
		return status, putBackRunning(err)
	}
	old.State = "exited"
	a.step(act, StepStopped)
	if ctx.Err() != nil {
		a.devices.release(act.Spec.Device, newKey(act))
		return StatusInterrupted, fmt.Errorf("interrupted after the old container was set aside as %s; the next apply finishes the recreate", aside)
	}
	_, upErr := a.bringUp(ctx, act, old.ID)
	var w *deviceWait
	if errors.As(upErr, &w) {
		w.note = fmt.Sprintf("the old container is stopped and set aside as %s until then", aside)
		return StatusDeferred, w
	}
	if upErr == nil {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if err := a.eng.RemoveContainer(cctx, old.ID); err != nil {
			// The new container runs; the old one is a leftover the next
			// plan removes.
			a.opts.Logger.Warn("old container not removed", "container", aside, "err", err)
		}
		a.step(act, StepRemoved)
		return StatusOK, nil
	}
	if ctx.Err() != nil {
		return StatusInterrupted, fmt.Errorf("interrupted: %w; the old container is set aside as %s and the next apply repairs it", upErr, aside)
	}
	return a.rollback(ctx, act, old, act.Spec.ContainerName, upErr)
}

// rollback restores a set-aside container after its replacement failed,
// and waits for it to run. It stays set aside, stopped, when its device
// was taken meanwhile.
func (a *applier) rollback(ctx context.Context, act *Action, old *runtime.ObservedContainer, name string, cause error) (Status, error) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if w := a.devices.claim(old.Device, old.ID, name, old.ID); w != nil {
		return StatusFailed, fmt.Errorf("new container failed: %w; the old one stays stopped and set aside as %s: %v", cause, old.Name, w)
	}
	err := a.putBack(cctx, old.ID, name, act.Spec.Restart)
	if err == nil {
		err = a.eng.StartContainer(cctx, old.ID)
	}
	if err == nil {
		// Its own healthcheck, if it has one (act.Spec is the new spec):
		// restored means running as before, healthy included.
		err = a.eng.WaitRunning(cctx, old.ID, runtime.WaitOptions{Healthy: true, MinUptime: a.plan.desired.Update.MinUptime, Timeout: a.plan.desired.Update.StartTimeout})
	}
	if err != nil {
		return StatusFailed, fmt.Errorf("new container failed: %w; rollback failed too: %v", cause, err)
	}
	a.step(act, StepRollback)
	return StatusRolledBack, fmt.Errorf("new container failed, old one restored: %w", cause)
}

// finish completes a recreate interrupted after the new container was made:
// the new container must come up before the set-aside one is removed;
// otherwise the new one goes and the old one is restored.
func (a *applier) finish(ctx context.Context, act *Action) (Status, error) {
	if err := a.removeLeftovers(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	newC := act.New
	if err := a.claimFor(newC, act.Old.ID); err != nil {
		return a.failed(ctx, err)
	}
	var upErr error
	if newC.State != "running" {
		upErr = a.eng.StartContainer(ctx, newC.ID)
	}
	if upErr == nil {
		upErr = a.eng.WaitRunning(ctx, newC.ID, a.waitOptions(act.Spec))
	}
	if upErr == nil && newC.Health == "unhealthy" {
		upErr = errors.New("unhealthy")
	}
	if ctx.Err() != nil {
		return StatusInterrupted, fmt.Errorf("interrupted: %v", upErr)
	}
	if upErr == nil {
		a.step(act, StepUp)
		if err := a.eng.RemoveContainer(ctx, act.Old.ID); err != nil {
			return a.failed(ctx, err)
		}
		a.step(act, StepRemoved)
		return StatusOK, nil
	}
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if err := a.eng.RemoveContainer(cctx, newC.ID); err != nil {
		return StatusFailed, fmt.Errorf("new container failed: %w; removing it failed too: %v", upErr, err)
	}
	a.devices.release(newC.Device, newC.ID)
	return a.rollback(ctx, act, act.Old, act.Spec.ContainerName, upErr)
}
