// Command labsync-agent runs testflinger-agent inside an agent container:
//
//	labsync-agent run [flags] -- testflinger-agent -c /data/.../sut.conf
//	labsync-agent healthcheck [flags]
//
// See docs/labsync-agent.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/labsync/labsync/agent"
	"github.com/labsync/labsync/internal/buildinfo"
)

// version and commit are set at build time by make build:
// -ldflags "-X main.version=$(git describe ...) -X main.commit=$(git rev-parse HEAD)".
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `labsync-agent supervises testflinger-agent inside an agent container.

Usage:
  labsync-agent run [flags] -- COMMAND [ARGS...]   run and supervise the agent
  labsync-agent healthcheck [flags]                exit 0 when the agent works, 1 with the reason when not
  labsync-agent version

Run 'labsync-agent run -h' for the flags. Documentation: docs/labsync-agent.md.
`

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runAgent(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		return healthcheck(args[1:], stdout, stderr)
	case "version", "--version":
		bi, _ := debug.ReadBuildInfo()
		fmt.Fprintln(stdout, buildinfo.Line("labsync-agent", version, commit, bi))
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "labsync-agent: unknown command %q\n%s", args[0], usage)
	return 2
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	var cfg agent.Config
	var passwordFile, logLevel, secretEnv string
	var logMax string
	fs.StringVar(&cfg.SUT, "sut", env("LABSYNC_SUT", host), "SUT name: prefix of the MQTT topics (env LABSYNC_SUT; default: the host name)")
	fs.StringVar(&cfg.AgentID, "agent-id", env("LABSYNC_AGENT_ID", ""), "testflinger-agent's agent_id, for its marker files (default: the SUT name)")
	fs.StringVar(&cfg.MQTT.Broker, "mqtt", env("LABSYNC_AGENT_MQTT", ""), "MQTT broker, e.g. tcp://mosquitto:1883; empty: no MQTT (env LABSYNC_AGENT_MQTT)")
	fs.StringVar(&cfg.MQTT.Username, "mqtt-username", env("LABSYNC_AGENT_MQTT_USERNAME", ""), "MQTT user name")
	fs.StringVar(&passwordFile, "mqtt-password-file", env("LABSYNC_AGENT_MQTT_PASSWORD_FILE", ""), "file with the MQTT password (or LABSYNC_AGENT_MQTT_PASSWORD)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", envDuration("LABSYNC_AGENT_HEARTBEAT", 20*time.Second), "period of 'ok' on <sut>/agent")
	fs.StringVar(&cfg.LogFile, "log-file", env("LABSYNC_AGENT_LOG_FILE", ""), "also write the agent's output to this file, rotated (empty: none)")
	fs.StringVar(&logMax, "log-max-size", "10m", "size at which the log file rotates")
	fs.IntVar(&cfg.LogKeep, "log-keep", 5, "rotated log files kept")
	fs.StringVar(&cfg.StateDir, "state-dir", env("LABSYNC_AGENT_STATE_DIR", agent.DefaultStateDir), "folder of the heartbeat file")
	fs.DurationVar(&cfg.StatusInterval, "status-interval", envDuration("LABSYNC_AGENT_STATUS_INTERVAL", 5*time.Second), "how often the heartbeat file is written")
	fs.StringVar(&cfg.MarkerDir, "marker-dir", "/tmp", "folder of testflinger-agent's TESTFLINGER-DEVICE-OFFLINE/RESTART markers")
	fs.DurationVar(&cfg.RestartMin, "restart-min", time.Second, "first wait before restarting a crashed agent (doubles up to --restart-max)")
	fs.DurationVar(&cfg.RestartMax, "restart-max", time.Minute, "longest wait before a restart")
	fs.IntVar(&cfg.CrashLimit, "crash-limit", 5, "crashes within --crash-window that make the agent crash-looping (unhealthy)")
	fs.DurationVar(&cfg.CrashWindow, "crash-window", 5*time.Minute, "window of --crash-limit")
	fs.DurationVar(&cfg.StopTimeout, "stop-timeout", 8*time.Second, "time the agent has to exit on SIGTERM before it is killed; keep it below Docker's stop timeout (10s)")
	fs.StringVar(&secretEnv, "secret-env", env("LABSYNC_AGENT_SECRET_ENV", ""), "comma-separated environment variables whose values are hidden in the agent's output (env LABSYNC_AGENT_SECRET_ENV, which labsync sets to the agent's secrets)")
	fs.StringVar(&logLevel, "log-level", "info", "level of labsync-agent's own log on stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.Command = fs.Args()
	if len(cfg.Command) == 0 {
		fmt.Fprintln(stderr, "labsync-agent run: give the agent command after --, e.g. labsync-agent run -- testflinger-agent -c /data/testflinger-agent/sut/dut.conf")
		return 2
	}
	size, err := parseSize(logMax)
	if err != nil {
		fmt.Fprintf(stderr, "labsync-agent run: --log-max-size: %v\n", err)
		return 2
	}
	cfg.LogMaxSize = size
	if passwordFile != "" {
		data, err := os.ReadFile(passwordFile)
		if err != nil {
			fmt.Fprintf(stderr, "labsync-agent run: %v\n", err)
			return 2
		}
		cfg.MQTT.Password = strings.TrimRight(string(data), "\r\n")
	} else {
		cfg.MQTT.Password = os.Getenv("LABSYNC_AGENT_MQTT_PASSWORD")
	}
	cfg.Secrets = secretValues(secretEnv, cfg.MQTT.Password)
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "labsync-agent run: --log-level %q\n", logLevel)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})).With("sut", cfg.SUT)
	cfg.Stdout = stdout
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	cfg.Signals = sigs
	code, err := agent.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "labsync-agent: %v\n", err)
	}
	return code
}

// secretValues returns the values of the variables named in names
// (comma-separated), and extra, for the output to hide.
func secretValues(names string, extra ...string) []string {
	values := extra
	for _, name := range strings.Split(names, ",") {
		if name = strings.TrimSpace(name); name != "" {
			values = append(values, os.Getenv(name))
		}
	}
	return values
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToLower(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, strings.TrimSuffix(t, "k")
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "g"):
		mult, t = 1<<30, strings.TrimSuffix(t, "g")
	}
	var v int64
	if _, err := fmt.Sscan(t, &v); err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size like 10m", s)
	}
	return v * mult, nil
}

func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", env("LABSYNC_AGENT_STATE_DIR", agent.DefaultStateDir), "folder of the heartbeat file")
	maxAge := fs.Duration("max-age", 0, "oldest acceptable heartbeat (default: 3 status intervals, at least 3s)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ok, reason := agent.Healthcheck(*stateDir, *maxAge)
	if !ok {
		fmt.Fprintln(stdout, "unhealthy: "+reason)
		return 1
	}
	fmt.Fprintln(stdout, reason)
	return 0
}
