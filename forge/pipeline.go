package forge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// Source is what the pipeline needs of the git cache.
type Source interface {
	FetchRef(ctx context.Context, ref string) (string, error)
	Tree(commit string) (fs.FS, error)
}

// Observer reads what a lab runs on the Docker host, and what labsync did
// not make that stands in its way.
type Observer interface {
	Observe(ctx context.Context, labName string) (*runtime.Observed, error)
	Foreign(ctx context.Context, o runtime.ForeignOptions) (*runtime.Foreign, error)
}

// PipelineOptions configure a Pipeline.
type PipelineOptions struct {
	GitHub   *Client
	Source   Source
	Docker   Observer
	Lab      string // the lab name when lab.yaml sets none
	BlobURL  string // e.g. https://github.com/owner/repo/blob/
	Logger   *slog.Logger
	Interval time.Duration // polling of open pull requests; 0: off
	// LabName, when set, gives the applied lab's name: markers and status
	// contexts keep it even when a pull request renames the lab.
	LabName func() string
	// Branch is the tracked branch; pull requests into others are not
	// planned.
	Branch string
	// JobTimeout bounds each GitHub or git job (default 2m).
	JobTimeout time.Duration
	// Drift, when set, reports drift that persists over two checks.
	Drift *DriftReporter
	// Planner plans a fetched head; the default plans in this process.
	// labsync serve plans in a child process with limits (PlanTree is
	// what that process runs), so no pull request can crash or stall the
	// daemon.
	Planner Planner
	// Load bounds and the host policy used when planning in-process.
	Load lab.LoadOptions
}

// PlanRequest is one pull request head to plan; it is in the cache.
type PlanRequest struct {
	Number int    `json:"number"`
	Head   string `json:"head"`
	Fork   bool   `json:"fork"`
	// Lab names the comment and status: the lab as it is applied.
	Lab string `json:"lab"`
	// DefaultName is the lab name when the head's lab.yaml sets none.
	DefaultName string `json:"default_name"`
	BlobURL     string `json:"blob_url"`
}

// Planner plans one pull request head.
type Planner func(ctx context.Context, req PlanRequest) (PlanResult, error)

// maxPending bounds the pull requests waiting to be planned; maxHeads the
// heads remembered for polling.
const (
	maxPending = 100
	maxHeads   = 1000
)

// Pipeline plans pull requests and reports applies on GitHub, on its own
// goroutine: nothing it does ever holds up a pass.
type Pipeline struct {
	opts PipelineOptions
	log  *slog.Logger
	wake chan struct{}

	mu       sync.Mutex
	pending  map[int]pullJob // latest request per pull request
	applies  []reconciler.Run
	drift    *driftJob      // latest check
	lastHead map[int]string // heads planned, for polling
}

type driftJob struct {
	revision string
	drifts   []Drift
}

type pullJob struct {
	head string
	fork bool
}

// NewPipeline makes a pipeline; Run starts it.
func NewPipeline(o PipelineOptions) *Pipeline {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.JobTimeout == 0 {
		o.JobTimeout = 2 * time.Minute
	}
	p := &Pipeline{opts: o, log: o.Logger, wake: make(chan struct{}, 1), pending: map[int]pullJob{}, lastHead: map[int]string{}}
	if p.opts.Planner == nil {
		p.opts.Planner = p.planInProcess
	}
	return p
}

func (p *Pipeline) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// PullRequest asks for a plan of pull request number at head. It never
// blocks; a newer request for the same pull request replaces an older one.
func (p *Pipeline) PullRequest(number int, head string, fork bool) {
	p.mu.Lock()
	ok := p.queue(number, pullJob{head: head, fork: fork})
	p.mu.Unlock()
	if !ok {
		p.log.Warn("pull request not queued: too many wait to be planned", "pr", number, "waiting", maxPending)
	}
	p.kick()
}

// queue records a request unless maxPending others wait; callers hold mu.
func (p *Pipeline) queue(number int, j pullJob) bool {
	if _, ok := p.pending[number]; !ok && len(p.pending) >= maxPending {
		return false
	}
	p.pending[number] = j
	return true
}

// Applied reports a pass that applied a revision to the pull requests
// that brought it. It never blocks.
func (p *Pipeline) Applied(run reconciler.Run) {
	p.mu.Lock()
	if len(p.applies) < 20 {
		p.applies = append(p.applies, run)
	}
	p.mu.Unlock()
	p.kick()
}

// CheckDrift queues a drift check of what a pass left uncorrected; only the
// latest check waits. It never blocks.
func (p *Pipeline) CheckDrift(revision string, drifts []Drift) {
	if p.opts.Drift == nil {
		return
	}
	p.mu.Lock()
	p.drift = &driftJob{revision: revision, drifts: drifts}
	p.mu.Unlock()
	p.kick()
}

// Run works through requests until ctx ends.
func (p *Pipeline) Run(ctx context.Context) {
	var poll <-chan time.Time
	if p.opts.Interval > 0 {
		t := time.NewTicker(p.opts.Interval)
		defer t.Stop()
		poll = t.C
	}
	job := func(f func(context.Context) error) (err error) {
		jctx, cancel := context.WithTimeout(ctx, p.opts.JobTimeout)
		defer cancel()
		// A bug must not end the daemon: the job fails alone.
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return f(jctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-poll:
			if err := job(func(c context.Context) error { p.pollOpen(c); return nil }); err != nil {
				p.log.Warn("open pull requests not polled", "err", err)
			}
		}
		p.mu.Lock()
		jobs, applies, drift := p.pending, p.applies, p.drift
		p.pending, p.applies, p.drift = map[int]pullJob{}, nil, nil
		p.mu.Unlock()
		if drift != nil {
			if err := job(func(c context.Context) error { return p.opts.Drift.Check(c, drift.revision, drift.drifts) }); err != nil {
				p.log.Warn("drift not reported", "err", err)
			}
		}
		for n, j := range jobs {
			if err := job(func(c context.Context) error { return p.planPull(c, n, j) }); err != nil {
				p.log.Warn("pull request not planned", "pr", n, "err", err)
			}
		}
		for _, run := range applies {
			if err := job(func(c context.Context) error { return p.reportApply(c, run) }); err != nil {
				p.log.Warn("apply result not reported", "revision", short(run.Applied), "err", err)
			}
		}
	}
}

// pollOpen queues the open pull requests whose head moved.
func (p *Pipeline) pollOpen(ctx context.Context) {
	pulls, err := p.opts.GitHub.OpenPulls(ctx)
	if err != nil {
		p.log.Warn("open pull requests not listed", "err", err)
		return
	}
	p.mu.Lock()
	open := map[int]bool{}
	for _, pr := range pulls {
		open[pr.Number] = true
		if p.opts.Branch != "" && pr.Base != p.opts.Branch {
			continue
		}
		if p.lastHead[pr.Number] != pr.Head {
			p.queue(pr.Number, pullJob{head: pr.Head, fork: pr.Fork})
		}
	}
	// Closed pull requests are forgotten.
	for n := range p.lastHead {
		if !open[n] {
			delete(p.lastHead, n)
		}
	}
	p.mu.Unlock()
}

// PlanResult is what a pull request's plan found.
type PlanResult struct {
	Lab     string `json:"lab"`
	Head    string `json:"head"`
	Body    string `json:"body"`
	Invalid bool   `json:"invalid"`
	// Held counts the SUTs held by errors in their files; the rest of
	// the revision is valid.
	Held int `json:"held,omitempty"`
	// Failed says why the plan could not be made (a crash, a limit);
	// the body then says so.
	Failed string `json:"failed,omitempty"`
}

// planPull fetches the pull request's head, validates and plans it against
// the live host, and keeps the lab's sticky comment and commit status up to
// date. Nothing from the pull request is built or run.
func (p *Pipeline) planPull(ctx context.Context, number int, j pullJob) error {
	res, err := p.Plan(ctx, number, j)
	if err != nil {
		return err
	}
	gh := p.opts.GitHub
	commentErr := func() error {
		_, err := gh.UpsertComment(ctx, number, Marker(res.Lab), res.Body)
		return err
	}()
	state, desc := StateSuccess, "valid"
	switch {
	case res.Failed != "":
		state, desc = StateError, "not planned: "+res.Failed
	case res.Invalid:
		state, desc = StateFailure, "invalid: see the labsync comment for each file:line"
	case res.Held > 0:
		state, desc = StateFailure, fmt.Sprintf("%d SUT(s) held by errors: see the labsync comment; the rest is valid", res.Held)
	}
	if err := gh.SetStatus(ctx, res.Head, "labsync/"+res.Lab+"/plan", state, desc); err != nil {
		return errors.Join(commentErr, err)
	}
	if commentErr != nil {
		return commentErr
	}
	p.mu.Lock()
	if _, ok := p.lastHead[number]; ok || len(p.lastHead) < maxHeads {
		p.lastHead[number] = res.Head
	}
	p.mu.Unlock()
	if res.Failed != "" {
		p.log.Warn("pull request could not be planned", "pr", number, "head", short(res.Head), "reason", res.Failed)
		return nil
	}
	p.log.Info("pull request planned", "pr", number, "head", short(res.Head), "invalid", res.Invalid)
	return nil
}

// Plan fetches a pull request's head and computes its plan and comment,
// without GitHub.
func (p *Pipeline) Plan(ctx context.Context, number int, j pullJob) (PlanResult, error) {
	head, err := p.opts.Source.FetchRef(ctx, fmt.Sprintf("refs/pull/%d/head", number))
	if err != nil {
		return PlanResult{}, err
	}
	if j.head != "" && head != j.head {
		p.log.Info("pull request head moved since the event; planning the newest", "pr", number, "event", short(j.head), "fetched", short(head))
	}
	// The comment and status belong to the lab as it is applied, whatever
	// name the pull request gives it.
	name := p.opts.Lab
	if p.opts.LabName != nil && p.opts.LabName() != "" {
		name = p.opts.LabName()
	}
	return p.opts.Planner(ctx, PlanRequest{Number: number, Head: head, Fork: j.fork, Lab: name, DefaultName: p.opts.Lab, BlobURL: p.opts.BlobURL})
}

func (p *Pipeline) planInProcess(ctx context.Context, req PlanRequest) (PlanResult, error) {
	tree, err := p.opts.Source.Tree(req.Head)
	if err != nil {
		return PlanResult{}, err
	}
	return PlanTree(ctx, tree, p.opts.Docker, req, p.opts.Load)
}

// PlanTree validates and plans the tree of a pull request's head against
// what the lab runs, and renders the comment. Nothing is built or run.
func PlanTree(ctx context.Context, tree fs.FS, docker Observer, req PlanRequest, load lab.LoadOptions) (PlanResult, error) {
	load.DefaultName = req.DefaultName
	l, err := lab.LoadContext(ctx, tree, load)
	view := PlanView{Lab: req.Lab, Head: req.Head, BlobURL: req.BlobURL, Diagnostics: l.Diagnostics, Fork: req.Fork}
	var verr *lab.ValidationError
	switch {
	case errors.As(err, &verr):
		return PlanResult{Lab: req.Lab, Head: req.Head, Body: RenderPlan(view), Invalid: true}, nil
	case err != nil:
		return PlanResult{}, err
	}
	d := lab.Compile(l, lab.CompileOptions{Revision: req.Head})
	if d.Lab != req.Lab {
		view.Diagnostics = append(view.Diagnostics, lab.Diagnostic{File: "lab.yaml", Severity: lab.SeverityWarning,
			Message: fmt.Sprintf("this pull request renames the lab from %s to %s: after the merge labsync manages the containers of %s as a new lab and prunes those of %s", req.Lab, d.Lab, d.Lab, req.Lab)})
	}
	obs, err := docker.Observe(ctx, d.Lab)
	if err != nil {
		return PlanResult{}, err
	}
	view.Plan, err = reconciler.PlanHost(ctx, d, obs, reconciler.PlanOptions{}, docker.Foreign)
	if err != nil {
		return PlanResult{}, err
	}
	return PlanResult{Lab: req.Lab, Head: req.Head, Body: RenderPlan(view), Held: len(view.Plan.Held)}, nil
}

// FailedPlan is the result for a head whose planning could not finish: the
// comment says why, and that nothing of it reached the lab host.
func FailedPlan(req PlanRequest, reason string) PlanResult {
	body := fmt.Sprintf("%s\n### labsync · `%s` · plan for `%s`\n\n"+
		"⚠️ **labsync could not plan this revision**: the planning %s.\n\n"+
		"Pull requests are planned in a separate process with limits on memory, CPU and time, so that no pull request can disturb the lab host: nothing of this one was applied, and the lab keeps converging. "+
		"Push a smaller change, or ask an operator to look at the labsync log for pull request #%d.\n",
		Marker(req.Lab), req.Lab, short(req.Head), cell(reason), req.Number)
	return PlanResult{Lab: req.Lab, Head: req.Head, Body: body, Failed: reason}
}

// reportApply updates the sticky comment of each pull request that brought
// the applied revision, and sets labsync/<lab>/apply on the commit.
func (p *Pipeline) reportApply(ctx context.Context, run reconciler.Run) error {
	gh := p.opts.GitHub
	labName := p.opts.Lab
	if p.opts.LabName != nil && p.opts.LabName() != "" {
		labName = p.opts.LabName()
	}
	target := run.Applied
	if run.Result == reconciler.ResultInvalid {
		target = run.Revision // the merged revision, which was not applied
	}
	pulls, err := gh.PullsForCommit(ctx, target)
	if err != nil {
		return err
	}
	body := RenderApply(ApplyView{Lab: labName, Revision: target, Results: run.Results, Plan: run.Plan, Invalid: run.Result == reconciler.ResultInvalid, Diagnostics: run.Diagnostics})
	var errs []error
	for _, n := range pulls {
		if _, err := gh.UpsertComment(ctx, n, Marker(labName), body); err != nil {
			errs = append(errs, err)
		}
	}
	state, desc := StateSuccess, fmt.Sprintf("applied: %d action(s)", len(run.Results))
	switch run.Result {
	case reconciler.ResultFailed:
		state, desc = StateFailure, run.Error
	case reconciler.ResultInvalid:
		state, desc = StateFailure, "invalid: not applied; the lab host stays at the last good revision"
	}
	if err := gh.SetStatus(ctx, target, "labsync/"+labName+"/apply", state, desc); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		p.log.Info("apply result reported", "revision", short(run.Applied), "pulls", fmt.Sprint(pulls))
	}
	return errors.Join(errs...)
}

// blobURL derives the web address of files from a repository's API
// coordinates.
func BlobURL(web, owner, repo string) string {
	return strings.TrimRight(web, "/") + "/" + owner + "/" + repo + "/blob/"
}
