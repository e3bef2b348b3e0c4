package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	Action   Action        `json:"action"`
	Status   Status        `json:"status"`
	Error    string        `json:"error,omitempty"`
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

// Deferred returns the objects whose change waits for a job to end.
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
	// StopTimeout is how long a container gets to stop before it is killed.
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
	a := &applier{eng: eng, plan: p, opts: opts, broken: map[string]string{}, serviceDone: map[string]Status{}, heldDevices: map[string]string{}}
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
			a.runParallel(ctx, batch)
			batch = nil
		}
		if parallel {
			batch, batchPhase = append(batch, i), ph
			continue
		}
		a.run(ctx, i)
	}
	if len(batch) > 0 {
		a.runParallel(ctx, batch)
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
	// heldDevices maps devices whose old agent could not be stopped (busy)
	// to that agent's name.
	heldDevices map[string]string

	// agentBin is the labsync-agent volume of this apply, made at the
	// first agent create.
	agentBinOnce sync.Once
	agentBin     *runtime.AgentBinary
	agentBinErr  error
}

func (a *applier) runParallel(ctx context.Context, idx []int) {
	sem := make(chan struct{}, a.opts.Parallelism)
	var wg sync.WaitGroup
	for _, i := range idx {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			a.run(ctx, i)
		}(i)
	}
	wg.Wait()
}

func (a *applier) step(act *Action, s Step) {
	if a.opts.OnStep != nil {
		a.opts.OnStep(act, s)
	}
}

func (a *applier) run(ctx context.Context, i int) {
	act := &a.plan.Actions[i]
	start := time.Now()
	log := a.opts.Logger.With("action", string(act.Kind), "object", act.Object, "target", act.Target)
	res := Result{Action: *act, Status: StatusOK, order: i}
	var err error
	if held := a.deviceHeld(act); held != "" {
		res.Status, res.Error = StatusDeferred, fmt.Sprintf("device %s is still driven by %s, which runs a job; this agent starts when it is done", act.Spec.Device, held)
	} else if skip := a.skipReason(act); skip != "" {
		res.Status, res.Error = StatusSkipped, skip
	} else if ctx.Err() != nil {
		res.Status, res.Error = StatusInterrupted, "apply was cancelled before this action started"
	} else {
		res.Status, err = a.do(ctx, act)
		if err != nil {
			res.Error = err.Error()
		}
	}
	res.Duration = time.Since(start)
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

// deviceHeld names the busy orphan that still drives the device act's
// agent would take, if any.
func (a *applier) deviceHeld(act *Action) string {
	if act.Spec == nil || act.Spec.Device == "" || act.ObjectKind != string(lab.KindAgent) {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.heldDevices[act.Spec.Device]
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

func (a *applier) do(ctx context.Context, act *Action) (Status, error) {
	// Changes that end a running agent wait for its job.
	if act.Kind == Recreate || act.Kind == Adopt || act.Kind == Remove || act.Kind == Stop {
		if deferred, why := a.busy(ctx, act); deferred {
			if act.Kind == Stop {
				// The orphan keeps its device until the job ends; the
				// agent that takes the device over waits too.
				a.mu.Lock()
				a.heldDevices[act.Old.Device] = act.Old.Name
				a.mu.Unlock()
			}
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
		return a.recreate(ctx, act)
	case Restore:
		return a.restore(ctx, act)
	case Finish:
		return a.finish(ctx, act)
	case Stop:
		// Stopped for good: restart policy "no", so a daemon restart does
		// not bring it back next to the agent that took its device.
		if err := a.eng.StopContainer(ctx, act.Old.ID, a.opts.StopTimeout); err != nil {
			return a.failed(ctx, err)
		}
		a.step(act, StepStopped)
		return done(a.eng.SetRestartPolicy(ctx, act.Old.ID, "no"))
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
	return runtime.CreateOptions{Lab: a.plan.Lab, Revision: a.plan.Revision, AgentMQTTDir: a.opts.AgentMQTTDir}
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
		if err := a.eng.RemoveContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("remove leftover %s: %w", c.Name, err)
		}
	}
	if len(act.Leftovers) > 0 {
		a.step(act, StepLeftovers)
	}
	return nil
}

func (a *applier) remove(ctx context.Context, act *Action) (Status, error) {
	if act.Old == nil { // leftovers only
		return done(a.removeLeftovers(ctx, act))
	}
	if err := a.eng.StopContainer(ctx, act.Old.ID, a.opts.StopTimeout); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepStopped)
	if err := a.eng.RemoveContainer(ctx, act.Old.ID); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepRemoved)
	return StatusOK, nil
}

// failed classifies an error: interrupted when the apply was cancelled.
func (a *applier) failed(ctx context.Context, err error) (Status, error) {
	if ctx.Err() != nil {
		return StatusInterrupted, fmt.Errorf("interrupted: %w", err)
	}
	return StatusFailed, err
}

// bringUp creates, starts and watches a new container. On failure the new
// container is removed.
func (a *applier) bringUp(ctx context.Context, act *Action) (string, error) {
	opts := a.createOpts()
	if act.Spec.Kind == lab.KindAgent {
		bin, err := a.agentBinary(ctx)
		if err != nil {
			return "", err
		}
		opts.AgentBinary = bin
	}
	id, err := a.eng.CreateContainer(ctx, act.Spec, opts)
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
				err = errors.Join(err, fmt.Errorf("remove failed container: %w", rmErr))
			}
		}
		return "", err
	}
	a.step(act, StepUp)
	return id, nil
}

func (a *applier) create(ctx context.Context, act *Action) (Status, error) {
	if _, err := a.bringUp(ctx, act); err != nil {
		return a.failed(ctx, err)
	}
	return StatusOK, nil
}

func (a *applier) start(ctx context.Context, act *Action) (Status, error) {
	if err := a.removeLeftovers(ctx, act); err != nil {
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
// device. What the new container needs is checked before the old one is
// touched. The old container is stopped, set aside under a new name with
// restart policy "no", and the new one created and watched; if it fails,
// it is removed and the old one gets its name and policy back and starts.
func (a *applier) recreate(ctx context.Context, act *Action) (Status, error) {
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
	if err := a.eng.StopContainer(ctx, old.ID, a.opts.StopTimeout); err != nil {
		return a.failed(ctx, err)
	}
	a.step(act, StepStopped)
	if !old.Aside {
		if err := a.eng.RenameContainer(ctx, old.ID, aside); err != nil {
			status, err := a.failed(ctx, err)
			cctx, cancel := cleanupContext(ctx)
			defer cancel()
			if startErr := a.eng.StartContainer(cctx, old.ID); startErr != nil {
				err = errors.Join(err, fmt.Errorf("restart old container: %w", startErr))
			}
			return status, err
		}
		if err := a.eng.SetRestartPolicy(ctx, old.ID, "no"); err != nil {
			a.opts.Logger.Warn("restart policy of the set-aside container not changed", "container", aside, "err", err)
		}
		a.step(act, StepSetAside)
	}
	if ctx.Err() != nil {
		return StatusInterrupted, fmt.Errorf("interrupted after the old container was set aside as %s; the next apply finishes the recreate", aside)
	}
	_, upErr := a.bringUp(ctx, act)
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
	origName := old.Name
	if old.Aside {
		origName = act.Spec.ContainerName
	}
	return a.rollback(ctx, act, old.ID, origName, upErr)
}

// rollback restores a set-aside container after its replacement failed.
func (a *applier) rollback(ctx context.Context, act *Action, oldID, name string, cause error) (Status, error) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	err := a.putBack(cctx, oldID, name, act.Spec.Restart)
	if err == nil {
		err = a.eng.StartContainer(cctx, oldID)
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
	return a.rollback(ctx, act, act.Old.ID, act.Spec.ContainerName, upErr)
}
