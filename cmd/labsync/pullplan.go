package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/labsync/labsync/forge"
	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/redact"
	"github.com/labsync/labsync/internal/sandbox"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// childRole is set in the environment of the processes labsync serve
// starts for itself, with the role they play.
const childRole = "LABSYNC_CHILD"

// pullPlanRequest is what labsync serve sends a plan-pull child on its
// standard input.
type pullPlanRequest struct {
	Request    forge.PlanRequest `json:"request"`
	GitURL     string            `json:"git_url"`
	GitCache   string            `json:"git_cache"`
	DockerHost string            `json:"docker_host,omitempty"`
	Policy     *lab.Policy       `json:"policy"`
	DataRoot   string            `json:"data_root,omitempty"`
}

// pullPlanReply is what the child prints.
type pullPlanReply struct {
	Result *forge.PlanResult `json:"result,omitempty"`
	Error  string            `json:"error,omitempty"`
}

// runPlanPull is the child labsync serve runs to plan a pull request: it
// reads the request on stdin, loads and plans the head's tree from the
// git cache (no network, no credentials) and prints the result. It is
// the only place where a pull request's content is read, so whatever it
// does ends here.
func runPlanPull(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	var req pullPlanRequest
	if err := json.NewDecoder(io.LimitReader(stdin, 1<<20)).Decode(&req); err != nil {
		return usageError{"plan-pull is run by labsync serve: it reads a request on stdin: " + err.Error()}
	}
	reply := pullPlanReply{}
	res, err := planPull(ctx, req)
	if err != nil {
		reply.Error = err.Error()
	} else {
		reply.Result = &res
	}
	return json.NewEncoder(stdout).Encode(reply)
}

func planPull(ctx context.Context, req pullPlanRequest) (forge.PlanResult, error) {
	src, err := gitsource.OpenCache(req.GitURL, req.GitCache)
	if err != nil {
		return forge.PlanResult{}, err
	}
	tree, err := src.Tree(req.Request.Head)
	if err != nil {
		return forge.PlanResult{}, err
	}
	rt, err := runtime.New(runtime.Options{Host: req.DockerHost})
	if err != nil {
		return forge.PlanResult{}, err
	}
	defer rt.Close()
	return forge.PlanTree(ctx, tree, rt, req.Request, lab.LoadOptions{Policy: req.Policy, DataRoot: req.DataRoot})
}

// childPlanner plans pull requests in a child process of this binary
// under limits: a crash, a limit or a time-out is reported on the pull
// request, and the daemon carries on.
type childPlanner struct {
	exe        string
	gitURL     string
	gitCache   string
	dockerHost string
	load       lab.LoadOptions
	limits     sandbox.Limits
	log        *slog.Logger
}

// childEnv is the whole environment of a child: what the Docker client
// reads, and the role. No secret of the daemon's goes along.
func childEnv(role string) []string {
	return append(sandbox.Environ("PATH", "TMPDIR", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_API_VERSION"), childRole+"="+role)
}

func (c *childPlanner) plan(ctx context.Context, req forge.PlanRequest) (forge.PlanResult, error) {
	in, err := json.Marshal(pullPlanRequest{Request: req, GitURL: c.gitURL, GitCache: c.gitCache, DockerHost: c.dockerHost, Policy: c.load.Policy, DataRoot: c.load.DataRoot})
	if err != nil {
		return forge.PlanResult{}, err
	}
	res, err := sandbox.Run(ctx, sandbox.Command{Path: c.exe, Args: []string{"plan-pull"}, Env: childEnv("plan-pull"), Stdin: in}, c.limits)
	if err != nil {
		return forge.PlanResult{}, fmt.Errorf("plan pull request #%d: %w", req.Number, err)
	}
	log := c.log.With("pr", req.Number, "head", req.Head, "peak_rss_mib", res.PeakRSS>>20, "cpu", res.CPU.Round(time.Millisecond), "wall", res.Wall.Round(time.Millisecond))
	if !res.OK() {
		how := res.Describe(c.limits)
		log.Warn("pull-request planning process failed", "how", how, "stderr", redact.String(res.Stderr))
		return forge.FailedPlan(req, "process "+how), nil
	}
	var reply pullPlanReply
	if err := json.Unmarshal(res.Stdout, &reply); err != nil || (reply.Result == nil && reply.Error == "") {
		log.Warn("pull-request planning process gave no result", "stdout_bytes", len(res.Stdout), "stderr", redact.String(res.Stderr))
		return forge.FailedPlan(req, "process gave no result"), nil
	}
	if reply.Error != "" {
		return forge.PlanResult{}, errors.New(reply.Error)
	}
	out := *reply.Result
	// The comment and status are the lab's own, whatever the child says.
	out.Lab, out.Head = req.Lab, req.Head
	log.Debug("pull request planned in a child process")
	return out, nil
}

// executable is this program, for child processes.
func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find labsync's own binary for child processes: %w", err)
	}
	return exe, nil
}
