package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
	"github.com/labsync/labsync/server"
	"github.com/labsync/labsync/testflinger"
)

type serveFlags struct {
	common
	configFile       string
	listen           string
	pollInterval     time.Duration
	driftSchedule    string
	cleanSlate       string
	webhookSecretF   string
	webhookTokenF    string
	apiTokenF        string
	insecureWebhooks bool
	forcePrune       bool
	adopt            bool
	adoptLab         string
	parallelism      int
	stopTimeout      time.Duration
	flapMax          int
	flapWindow       time.Duration
	minBackoff       time.Duration
	busyRecheck      time.Duration
	ignoreBusy       bool
	agentBinary      string
	mqtt             mqttFlags
	github           githubFlags
	autoHeal         reconciler.AutoHeal
	maxBackoff       time.Duration
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	f.common.register(fs, true)
	fs.StringVar(&f.configFile, "config", "", "YAML file of flag values (keys are flag names); flags and LABSYNC_* variables win over it")
	fs.StringVar(&f.listen, "listen", fmt.Sprintf(":%d", lab.DefaultDaemonPort), "HTTP address for webhooks, the API, metrics and the status page (the default port is clear of those a lab's stack publishes)")
	fs.DurationVar(&f.pollInterval, "poll-interval", 60*time.Second, "how often the remote head is checked (jittered 10%); 0 disables polling")
	fs.StringVar(&f.driftSchedule, "drift-schedule", "@every 15m", "cron schedule of drift checks (robfig/cron syntax, e.g. '*/10 * * * *'); empty disables")
	fs.StringVar(&f.cleanSlate, "clean-slate-schedule", "", "cron schedule of clean slates: every agent in sync and idle (per the Testflinger server of lab.yaml) is recreated; empty disables")
	fs.StringVar(&f.webhookSecretF, "webhook-secret-file", "", "file with the GitHub webhook secret (or LABSYNC_WEBHOOK_SECRET)")
	fs.StringVar(&f.webhookTokenF, "webhook-token-file", "", "file with the bearer token of /hooks/generic (or LABSYNC_WEBHOOK_TOKEN)")
	fs.BoolVar(&f.insecureWebhooks, "insecure-webhooks", false, "serve webhooks without a secret or token (anyone who reaches the port can trigger passes); /hooks/generic stays closed when a GitHub secret is set")
	fs.StringVar(&f.apiTokenF, "api-token-file", "", "file with the bearer token of the API's POST endpoints (or LABSYNC_API_TOKEN); without one they refuse every request")
	fs.BoolVar(&f.forcePrune, "force-prune", false, "let the first pass remove orphans even when the mass-removal guard trips (later passes are guarded again)")
	fs.BoolVar(&f.adopt, "adopt", false, adoptUsage+"; until the first pass that applies cleanly")
	fs.StringVar(&f.adoptLab, "adopt-lab", "", "take over the containers of this lab name: the lab's old name after a rename, or its own name after its repository moved (replaced stop-first by this lab's)")
	fs.IntVar(&f.parallelism, "parallelism", 0, "agents changed at once (default: agents.update.parallelism, 4)")
	fs.DurationVar(&f.stopTimeout, "stop-timeout", reconciler.DefaultStopTimeout, "time a container gets to stop before it is killed")
	fs.IntVar(&f.flapMax, "flap-limit", 5, "Docker events of one container that may trigger passes within --flap-window")
	fs.DurationVar(&f.flapWindow, "flap-window", 10*time.Minute, "window of --flap-limit")
	fs.DurationVar(&f.busyRecheck, "busy-recheck", 30*time.Second, "how soon a change deferred for a busy agent is tried again")
	fs.BoolVar(&f.ignoreBusy, "ignore-busy", false, "recreate or remove agents even while they run a job")
	fs.StringVar(&f.agentBinary, "agent-binary", "", agentBinaryUsage)
	f.mqtt.register(fs)
	f.github.register(fs)
	fs.IntVar(&f.autoHeal.After, "auto-heal-after", 0, "restart an agent that failed this many healthchecks in a row; 0 disables auto-heal")
	fs.IntVar(&f.autoHeal.Max, "auto-heal-max", 3, "auto-heal restarts of one agent allowed within --auto-heal-window")
	fs.DurationVar(&f.autoHeal.Window, "auto-heal-window", time.Hour, "window of --auto-heal-max")
	fs.DurationVar(&f.minBackoff, "min-backoff", 5*time.Second, "first wait before a failed pass is retried (doubles each time)")
	fs.DurationVar(&f.maxBackoff, "max-backoff", 5*time.Minute, "longest wait before a failed pass is retried")
}

// applyEnvAndConfig fills flags not given on the command line from
// LABSYNC_<FLAG> variables, then from the config file.
func applyEnvAndConfig(fs *flag.FlagSet, configFile string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var fromFile map[string]any
	if configFile != "" {
		data, err := os.ReadFile(configFile)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(data, &fromFile); err != nil {
			return fmt.Errorf("config file %s: %w", configFile, err)
		}
		for k := range fromFile {
			if fs.Lookup(k) == nil || k == "config" {
				return fmt.Errorf("config file %s: unknown key %q (keys are the flags of labsync serve)", configFile, k)
			}
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "LABSYNC_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
			return
		}
		if v, ok := fromFile[f.Name]; ok {
			if e := f.Value.Set(configValue(v)); e != nil {
				err = fmt.Errorf("config file %s: %s: %w", configFile, f.Name, e)
			}
		}
	})
	return err
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: labsync serve --repo URL [flags]\n\nRun the daemon: poll the lab repository, take webhooks, converge this Docker host,\nand serve status, metrics and an API. Every flag can also be set as LABSYNC_<FLAG>\n(e.g. LABSYNC_POLL_INTERVAL=30s) or in --config. Documentation: docs/operations.md.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	f.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{"serve takes no PATH; give the repository with --repo"}
	}
	if f.configFile == "" {
		f.configFile = os.Getenv("LABSYNC_CONFIG")
	}
	if err := applyEnvAndConfig(fs, f.configFile); err != nil {
		return usageError{err.Error()}
	}
	if f.git.repo == "" {
		return usageError{"serve needs --repo (or LABSYNC_REPO)"}
	}
	// Host paths (runtime data, the agents' socket) go to the engine whole.
	abs, err := filepath.Abs(f.dataDir)
	if err != nil {
		return usageError{"--data-dir: " + err.Error()}
	}
	f.dataDir = abs
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		return err
	}
	secret, err := readSecret(f.webhookSecretF, "LABSYNC_WEBHOOK_SECRET")
	if err != nil {
		return err
	}
	token, err := readSecret(f.webhookTokenF, "LABSYNC_WEBHOOK_TOKEN")
	if err != nil {
		return err
	}
	apiToken, err := readSecret(f.apiTokenF, "LABSYNC_API_TOKEN")
	if err != nil {
		return err
	}
	if secret == "" && token == "" && !f.insecureWebhooks {
		log.Warn("webhooks are off: set --webhook-secret-file (GitHub) or --webhook-token-file (generic), or --insecure-webhooks")
	}
	if f.stopTimeout < 0 {
		return fmt.Errorf("--stop-timeout %s: must not be negative (0 means the default, %s)", f.stopTimeout, reconciler.DefaultStopTimeout)
	}
	agentBin, err := runtime.FindAgentBinary(f.agentBinary)
	if err != nil {
		return fmt.Errorf("--agent-binary: %w", err)
	}
	if agentBin == "" {
		log.Warn("no labsync-agent binary found; agents that run it from its volume (the default command does) start only if their image has it: set --agent-binary", "path", lab.AgentBinDir+"/labsync-agent")
	} else {
		log.Info("agent containers get labsync-agent", "binary", agentBin)
	}
	if f.git.cacheDir == "" {
		f.git.cacheDir = filepath.Join(f.dataDir, "git")
	}
	src, err := f.git.open()
	if err != nil {
		return err
	}
	rt, err := runtime.New(runtime.Options{Host: f.dockerHost, Logger: log, Secrets: runtime.DirSecrets{Dir: f.secretsDir}})
	if err != nil {
		return err
	}
	defer rt.Close()
	name := f.name
	if name == "" {
		name = repoName(src.URL())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ctrlRef atomic.Pointer[reconciler.Controller]
	currentLab := func() string {
		if c := ctrlRef.Load(); c != nil {
			return c.Status().Lab
		}
		return ""
	}
	policy, err := f.policy.policy()
	if err != nil {
		return err
	}
	pipeline, err := f.github.start(ctx, &f.git, name, f.dataDir, f.dockerHost, lab.LoadOptions{Policy: policy, DataRoot: f.dataDir}, src, currentLab, rt, log)
	if err != nil {
		return err
	}
	reporter := &applyReporter{p: pipeline}
	var srv *server.Server
	mq, err := f.mqtt.start(ctx, f.dataDir, log)
	if err != nil {
		return err
	}
	defer mq.close()
	ctrl := reconciler.NewController(reconciler.ControllerOptions{
		Source: src, Docker: rt, DefaultName: name, Load: lab.LoadOptions{Policy: policy, DataRoot: f.dataDir},
		PollInterval: f.pollInterval, MinBackoff: f.minBackoff, MaxBackoff: f.maxBackoff,
		ForcePrune:   f.forcePrune,
		Adopt:        f.adopt,
		Identity:     reconciler.NormalSource(src.URL()),
		IdentityFile: reconciler.IdentityFile(f.dataDir, reconciler.NormalSource(src.URL())),
		AdoptLab:     f.adoptLab,
		Apply:        reconciler.ApplyOptions{Parallelism: f.parallelism, StopTimeout: f.stopTimeout, IgnoreBusy: f.ignoreBusy, AgentBinary: agentBin},
		AgentMQTTDir: mq.agentSocketDir,
		BusyRecheck:  f.busyRecheck,
		Logger:       log,
		OnRun:        func(r reconciler.Run) { srv.ObserveRun(r); reporter.observe(r, ctrlRef.Load().Status()) },
		Events: func(ctx context.Context, labName string) <-chan runtime.Event {
			errs := make(chan error, 1)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case err := <-errs:
						log.Warn("docker event stream broke; reopening", "err", err)
					}
				}
			}()
			return rt.Events(ctx, labName, errs)
		},
		FlapLimit: &reconciler.FlapLimiter{Max: f.flapMax, Window: f.flapWindow},
		AgentIdle: testflingerIdle,
	})
	ctrlRef.Store(ctrl)
	mq.attach(ctrl)
	srv = server.New(server.Options{
		Status: ctrl, Trigger: ctrl.Trigger, Sync: ctrl.Sync, Branch: f.git.branch,
		WebhookSecret: []byte(secret), WebhookToken: []byte(token), Insecure: f.insecureWebhooks,
		APIToken: []byte(apiToken), Ready: rt.Ping, Logger: log,
	})
	if pipeline != nil {
		srv.SetPullRequestHandler(pipeline.PullRequest)
	}

	schedules := cron.New()
	if f.driftSchedule != "" {
		if _, err := schedules.AddFunc(f.driftSchedule, func() { ctrl.TriggerDriftCheck("schedule: drift check") }); err != nil {
			return usageError{fmt.Sprintf("--drift-schedule %q: %v", f.driftSchedule, err)}
		}
	}
	if f.cleanSlate != "" {
		if _, err := schedules.AddFunc(f.cleanSlate, func() { ctrl.TriggerCleanSlate("schedule: clean slate") }); err != nil {
			return usageError{fmt.Sprintf("--clean-slate-schedule %q: %v", f.cleanSlate, err)}
		}
	}

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	fmt.Fprintf(stdout, "labsync serving %s (branch %s) on http://%s\n", src.URL(), f.git.branch, ln.Addr())

	errc := make(chan error, 2)
	go func() {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	schedules.Start()
	defer schedules.Stop()
	ctrlDone := make(chan error, 1)
	go func() { ctrlDone <- ctrl.Run(ctx) }()

	ctrlEnded := false
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-ctrlDone:
		ctrlEnded = true
	}
	cancel()
	shutdown, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	_ = httpSrv.Shutdown(shutdown)
	if !ctrlEnded {
		// Let the pass under way record itself and finish its clean-up
		// (a rollback has a minute); a second signal exits at once.
		select {
		case <-ctrlDone:
		case <-time.After(90 * time.Second):
			log.Warn("the pass under way did not end within 90s; exiting")
		}
	}
	log.Info("labsync stopped")
	return err
}

// testflingerIdle asks the lab's Testflinger server whether an agent runs a
// job.
func testflingerIdle(ctx context.Context, d *lab.Desired, agent string) (bool, error) {
	if d.TestflingerServer == "" {
		return false, errors.New("testflinger.server is not set in lab.yaml")
	}
	st, err := testflinger.NewClient(d.TestflingerServer).AgentState(ctx, agent)
	if err != nil {
		return false, err
	}
	return st.Idle(), nil
}
