package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/labsync/labsync/forge"
	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/sandbox"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// githubFlags configure pull-request feedback on GitHub.
type githubFlags struct {
	tokenFile, repo, apiURL, webURL, login string
	prPoll                                 time.Duration
	planMemory                             string
	planCPU, planTimeout                   time.Duration
}

func (g *githubFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.tokenFile, "github-token-file", "", "file with a GitHub token (or LABSYNC_GITHUB_TOKEN); without one, pull-request feedback is off")
	fs.StringVar(&g.repo, "github-repo", "", "owner/repo on GitHub (default: taken from --repo when it is on github.com)")
	fs.StringVar(&g.apiURL, "github-api-url", "", "REST API root for GitHub Enterprise, e.g. https://ghe.example.com/api/v3/")
	fs.StringVar(&g.webURL, "github-web-url", "https://github.com", "web root for links to files in comments")
	fs.StringVar(&g.login, "github-login", "", "the bot's login, to find its comments (default: the token's user)")
	fs.DurationVar(&g.prPoll, "pr-poll-interval", 0, "also plan open pull requests whose head moved, this often (for labs GitHub cannot reach); 0: webhooks only")
	fs.StringVar(&g.planMemory, "pr-plan-memory", "512m", "memory limit of the process that plans a pull request")
	fs.DurationVar(&g.planCPU, "pr-plan-cpu", time.Minute, "CPU time limit of the process that plans a pull request")
	fs.DurationVar(&g.planTimeout, "pr-plan-timeout", 90*time.Second, "time limit of the process that plans a pull request")
}

// planLimits are the limits of the pull-request planning process.
func (g *githubFlags) planLimits() (sandbox.Limits, error) {
	mem, err := lab.ParseByteSize(g.planMemory)
	if err != nil || mem < 32<<20 {
		return sandbox.Limits{}, usageError{fmt.Sprintf("--pr-plan-memory %q: give a size of 32m or more, e.g. 512m", g.planMemory)}
	}
	if g.planCPU <= 0 || g.planTimeout <= 0 {
		return sandbox.Limits{}, usageError{"--pr-plan-cpu and --pr-plan-timeout must be above 0"}
	}
	return sandbox.Limits{Memory: mem, CPU: g.planCPU, Wall: g.planTimeout}, nil
}

// start makes the pull-request pipeline, or returns nil when no token is
// given.
func (g *githubFlags) start(ctx context.Context, git *gitFlags, labName, dataDir, dockerHost string, load lab.LoadOptions, tracked *gitsource.Source, current func() string, docker forge.Observer, log *slog.Logger) (*forge.Pipeline, error) {
	token, err := readSecret(g.tokenFile, "LABSYNC_GITHUB_TOKEN")
	if err != nil || token == "" {
		return nil, err
	}
	limits, err := g.planLimits()
	if err != nil {
		return nil, err
	}
	exe, err := executable()
	if err != nil {
		return nil, err
	}
	spec := g.repo
	if spec == "" {
		spec = git.repo
	}
	owner, repo, err := forge.ParseRepo(spec)
	if err != nil {
		return nil, usageError{"--github-repo: " + err.Error()}
	}
	client, err := forge.New(forge.Options{Token: token, BaseURL: g.apiURL, Owner: owner, Repo: repo, Login: g.login, Logger: log})
	if err != nil {
		return nil, err
	}
	// Pull requests are fetched into a cache of their own, so a slow fetch
	// of one never holds the tracked branch's cache that passes read.
	pulls := *git
	pulls.cacheDir = filepath.Join(dataDir, "git-pulls")
	src, err := pulls.open()
	if err != nil {
		return nil, err
	}
	// Drift is traced through the tracked branch's history.
	drift := forge.NewDriftReporter(forge.DriftOptions{GitHub: client, History: tracked, Lab: labName,
		StateFile: filepath.Join(dataDir, "drift-reports.json"), Logger: log})
	planner := &childPlanner{exe: exe, gitURL: src.URL(), gitCache: pulls.cacheDir, dockerHost: dockerHost, load: load, limits: limits, log: log}
	p := forge.NewPipeline(forge.PipelineOptions{GitHub: client, Source: src, Docker: docker, Lab: labName,
		BlobURL: forge.BlobURL(strings.TrimRight(g.webURL, "/"), owner, repo), Logger: log, Interval: g.prPoll, Drift: drift,
		LabName: current, Branch: git.branch, Planner: planner.plan, Load: load})
	go p.Run(ctx)
	log.Info("pull-request feedback on GitHub", "repo", owner+"/"+repo)
	return p, nil
}

// applyReporter sends the outcome of each new revision to the pipeline:
// once per revision and result, so self-heal passes and retries do not
// rewrite a merged pull request's report.
type applyReporter struct {
	p    *forge.Pipeline
	mu   sync.Mutex
	last string // revision and result last reported
}

func (a *applyReporter) observe(run reconciler.Run, st reconciler.LabStatus) {
	if a == nil || a.p == nil || run.Revision == "" || run.Result == reconciler.ResultError {
		return
	}
	if run.Applied != "" {
		a.p.CheckDrift(run.Applied, forge.DriftsOf(st.Plan, run.Results))
	}
	if run.Applied != run.Revision && run.Result != reconciler.ResultInvalid {
		return
	}
	key := run.Revision + "/" + run.Result
	a.mu.Lock()
	defer a.mu.Unlock()
	if key == a.last {
		return
	}
	a.last = key
	a.p.Applied(run)
}
