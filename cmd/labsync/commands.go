package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// common holds the flags every lab command shares.
type common struct {
	git        gitFlags
	name       string
	dockerHost string
	logLevel   string
	secretsDir string
	dataDir    string
	policy     policyFlags
}

func (c *common) register(fs *flag.FlagSet, docker bool) {
	fs.StringVar(&c.name, "name", "", "lab name when lab.yaml sets none (default: the folder's or repository's name)")
	c.git.register(fs)
	c.policy.register(fs)
	fs.StringVar(&c.dataDir, "data-dir", envOr("LABSYNC_DATA_DIR", lab.DefaultDataRoot), "labsync's data folder on the Docker host: the daemon's git cache and state, and each lab's runtime data under labs/<lab> (env: LABSYNC_DATA_DIR)")
	if docker {
		fs.StringVar(&c.dockerHost, "docker-host", "", "Docker engine address (default: $DOCKER_HOST or the local socket)")
		fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
		fs.StringVar(&c.secretsDir, "secrets-dir", os.Getenv("LABSYNC_SECRETS_DIR"), "folder with one file per secret (env: LABSYNC_SECRETS_DIR)")
	}
}

func parse(fs *flag.FlagSet, args []string) (string, error) {
	path, err := parseArgs(fs, args)
	if err != nil {
		return "", err
	}
	if fs.NArg() > 0 && fs.Lookup("repo").Value.String() != "" {
		return "", usageError{errPathAndRepo.Error()}
	}
	return path, nil
}

func parseArgs(fs *flag.FlagSet, args []string) (string, error) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.Usage()
			return "", exitError{0}
		}
		return "", usageError{err.Error()}
	}
	switch fs.NArg() {
	case 0:
		return ".", nil
	case 1:
		return fs.Arg(0), nil
	}
	return "", usageError{fmt.Sprintf("%s takes one PATH, got %d", fs.Name(), fs.NArg())}
}

func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: labsync %s [flags] [PATH]\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// loadLab loads the repository (the folder dir, or --repo at --rev) and
// prints its diagnostics. It returns the revision: the commit, or empty for
// a folder.
func loadLab(ctx context.Context, dir string, c *common, stderr io.Writer) (*lab.Lab, string, error) {
	var fsys fs.FS
	var name, revision string
	if c.git.repo != "" {
		tree, commit, repoName, err := c.git.checkout(ctx)
		if err != nil {
			return nil, "", err
		}
		fsys, name, revision, dir = tree, repoName, commit, gitsource.Redact(c.git.repo)+"@"+commit[:12]
	} else {
		info, err := os.Stat(dir)
		if err != nil {
			return nil, "", fmt.Errorf("lab repository: %w", err)
		}
		if !info.IsDir() {
			return nil, "", fmt.Errorf("lab repository %s is not a folder", dir)
		}
		// os.Root keeps every read inside the folder, even through a
		// symbolic link that points out of it. It stays open until the
		// command ends: apply reads build contexts from it.
		root, err := os.OpenRoot(dir)
		if err != nil {
			return nil, "", fmt.Errorf("lab repository: %w", err)
		}
		abs, _ := filepath.Abs(dir)
		fsys, name = root.FS(), filepath.Base(abs)
	}
	if c.name != "" {
		name = c.name
	}
	policy, err := c.policy.policy()
	if err != nil {
		return nil, "", err
	}
	dataRoot, err := filepath.Abs(c.dataDir) // a host path: the engine needs it whole
	if err != nil {
		return nil, "", fmt.Errorf("--data-dir: %w", err)
	}
	l, err := lab.LoadContext(ctx, fsys, lab.LoadOptions{DefaultName: name, Policy: policy, DataRoot: dataRoot})
	if ctx.Err() != nil {
		return nil, "", ctx.Err()
	}
	for _, d := range l.Diagnostics {
		fmt.Fprintln(stderr, d.String())
	}
	if err != nil {
		errs, warns := l.Diagnostics.Count()
		fmt.Fprintf(stderr, "%s: %d error(s), %d warning(s)\n", dir, errs, warns)
		return nil, "", exitError{1}
	}
	return l, revision, nil
}

func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlagSet("validate", "Check a lab repository: every error with file:line. Exit 0 when valid (warnings allowed), 1 when not.")
	c.register(fs, false)
	dir, err := parse(fs, args)
	if err != nil {
		return err
	}
	l, _, err := loadLab(ctx, dir, &c, stderr)
	if err != nil {
		return err
	}
	if c.git.repo != "" {
		dir = gitsource.Redact(c.git.repo)
	}
	errs, warns := l.Diagnostics.Count()
	if errs > 0 {
		// Only SUTs are held: the rest would be applied, but the
		// repository still has errors.
		fmt.Fprintf(stderr, "%s: %d error(s), %d warning(s); %d SUT(s) held, the rest would be applied: %s\n", dir, errs, warns, len(l.Held), strings.Join(l.HeldNames(), ", "))
		writeDataMounts(stdout, l)
		return exitError{1}
	}
	agents, services := 0, 0
	for _, s := range l.SUTs {
		if s.Enabled() {
			agents++
		}
	}
	if l.Stack != nil {
		services = len(l.Stack.Services)
	}
	fmt.Fprintf(stdout, "%s: lab %q is valid: %d agent(s), %d service(s), %d warning(s)\n", dir, l.Name, agents, services, warns)
	writeDataMounts(stdout, l)
	return nil
}

// writeDataMounts says where each runtime-data mount lives on the host.
func writeDataMounts(w io.Writer, l *lab.Lab) {
	for _, m := range l.DataMounts {
		fmt.Fprintf(w, "  runtime data: service '%s' mounts ./%s at %s: host folder %s (made when missing, never deleted)\n", m.Service, m.Source, m.Target, m.HostPath)
	}
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Sprintf("--log-level %q: use debug, info, warn or error", level)}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
}

// planHost loads and compiles the lab, connects to Docker, observes and
// plans. done closes the Docker client and logs the API calls made.
func planHost(ctx context.Context, dir string, c *common, opts reconciler.PlanOptions, stderr io.Writer) (p *reconciler.Changeset, rt *runtime.Client, done func(), err error) {
	l, revision, err := loadLab(ctx, dir, c, stderr)
	if err != nil {
		return nil, nil, nil, err
	}
	log, err := newLogger(c.logLevel, stderr)
	if err != nil {
		return nil, nil, nil, err
	}
	desired := lab.Compile(l, lab.CompileOptions{Revision: revision})
	rt, err = runtime.New(runtime.Options{Host: c.dockerHost, Logger: log, Secrets: runtime.DirSecrets{Dir: c.secretsDir}})
	if err != nil {
		return nil, nil, nil, err
	}
	done = func() {
		reads, writes := rt.Calls()
		log.Debug("docker api calls", "reads", reads, "writes", writes)
		rt.Close()
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	observed, err := rt.Observe(octx, desired.Lab)
	if err != nil {
		done()
		return nil, nil, nil, fmt.Errorf("observe the Docker host: %w", err)
	}
	p, err = reconciler.PlanHost(octx, desired, observed, opts, rt.Foreign)
	if err != nil {
		done()
		return nil, nil, nil, fmt.Errorf("look for containers labsync did not make: %w", err)
	}
	return p, rt, done, nil
}

func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	var asJSON, forcePrune bool
	fs := newFlagSet("plan", "Show what apply would do on this Docker host, with a reason for every action. Changes nothing.")
	c.register(fs, true)
	fs.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	fs.BoolVar(&forcePrune, "force-prune", false, "plan removals even when the mass-removal guard trips")
	var adopt bool
	fs.BoolVar(&adopt, "adopt", false, adoptUsage)
	dir, err := parse(fs, args)
	if err != nil {
		return err
	}
	p, _, done, err := planHost(ctx, dir, &c, reconciler.PlanOptions{ForcePrune: forcePrune, Adopt: adopt}, stderr)
	if err != nil {
		return err
	}
	defer done()
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(p); err != nil {
			return err
		}
	} else if err := p.WriteTable(stdout); err != nil {
		return err
	}
	return heldExit(p, stderr)
}

// adoptUsage documents --adopt of plan, apply and serve.
const adoptUsage = "take over what labsync did not make and stands in its way: containers with the names it uses or of the compose project in lab.yaml's adopt (replaced stop-first, kept aside until the new one runs), volumes it declares (reused with their data)"

// heldExit says which SUTs are held and which objects are blocked, and
// returns exit status 1 when any is.
func heldExit(p *reconciler.Changeset, stderr io.Writer) error {
	if len(p.Held) == 0 && len(p.Blocked) == 0 {
		return nil
	}
	if len(p.Held) > 0 {
		names := make([]string, len(p.Held))
		for i, h := range p.Held {
			names[i] = h.Name
		}
		fmt.Fprintf(stderr, "labsync: %d SUT(s) held until their files are fixed: %s\n", len(names), strings.Join(names, ", "))
	}
	if len(p.Blocked) > 0 {
		fmt.Fprintf(stderr, "labsync: %d object(s) blocked by containers or volumes labsync did not make; --adopt takes them over\n", len(p.Blocked))
	}
	return exitError{1}
}

func runApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	var forcePrune bool
	var parallelism int
	var stopTimeout time.Duration
	fs := newFlagSet("apply", "Converge this Docker host to the lab: plan, apply, and report per object. Exit 1 when any action failed.")
	c.register(fs, true)
	fs.BoolVar(&forcePrune, "force-prune", false, "remove orphans even when the mass-removal guard trips")
	fs.IntVar(&parallelism, "parallelism", 0, "agents changed at once (default: agents.update.parallelism, 4)")
	fs.DurationVar(&stopTimeout, "stop-timeout", reconciler.DefaultStopTimeout, "time a container gets to stop before it is killed")
	var ignoreBusy bool
	fs.BoolVar(&ignoreBusy, "ignore-busy", false, "recreate or remove agents even while they run a job (otherwise such changes are deferred)")
	var agentBinFlag string
	fs.StringVar(&agentBinFlag, "agent-binary", os.Getenv("LABSYNC_AGENT_BINARY"), agentBinaryUsage+" (env: LABSYNC_AGENT_BINARY)")
	var adopt bool
	fs.BoolVar(&adopt, "adopt", false, adoptUsage)
	dir, err := parse(fs, args)
	if err != nil {
		return err
	}
	if stopTimeout < 0 {
		return fmt.Errorf("--stop-timeout %s: must not be negative (0 means the default, %s)", stopTimeout, reconciler.DefaultStopTimeout)
	}
	agentBin, err := runtime.FindAgentBinary(agentBinFlag)
	if err != nil {
		return fmt.Errorf("--agent-binary: %w", err)
	}
	p, rt, done, err := planHost(ctx, dir, &c, reconciler.PlanOptions{ForcePrune: forcePrune, Adopt: adopt}, stderr)
	if err != nil {
		return err
	}
	defer done()
	if err := p.WriteTable(stdout); err != nil {
		return err
	}
	if p.Empty() {
		return heldExit(p, stderr)
	}
	fmt.Fprintf(stdout, "\nApplying %d action(s)...\n", len(p.Actions))
	pr := &progress{w: stdout, total: len(p.Actions)}
	report := reconciler.Apply(ctx, rt, p, reconciler.ApplyOptions{
		Parallelism: parallelism,
		StopTimeout: stopTimeout,
		OnStep:      pr.step,
		OnResult:    pr.result,
		IgnoreBusy:  ignoreBusy,
		AgentBinary: agentBin,
	})
	writeReport(stdout, report)
	if d := report.Deferred(); len(d) > 0 {
		fmt.Fprintf(stderr, "labsync: %d change(s) deferred while agents run jobs (%s); apply again when they are idle, or with --ignore-busy\n", len(d), strings.Join(d, ", "))
	}
	if n := report.Failed() + len(report.Deferred()); n > 0 {
		fmt.Fprintf(stderr, "labsync: %d of %d action(s) did not succeed\n", n, len(report.Results))
		return exitError{1}
	}
	return heldExit(p, stderr)
}

// agentBinaryUsage describes --agent-binary of apply and serve.
const agentBinaryUsage = "static labsync-agent binary that agent containers get, read-only at " + lab.AgentBinDir + " (default: labsync-agent next to labsync, else on PATH)"

func writeReport(w io.Writer, r *reconciler.Report) {
	counts := map[reconciler.Status]int{}
	for _, res := range r.Results {
		counts[res.Status]++
	}
	var parts []string
	for _, s := range []reconciler.Status{reconciler.StatusOK, reconciler.StatusFailed, reconciler.StatusRolledBack, reconciler.StatusSkipped, reconciler.StatusInterrupted, reconciler.StatusDeferred} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(w, "\nApply finished in %s: %s.\n", r.Duration.Round(time.Millisecond), strings.Join(parts, ", "))
}
