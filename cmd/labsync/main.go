// Command labsync keeps a Testflinger lab's Docker host in the state
// committed to its git repository. See README.md and docs/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/labsync/labsync/internal/buildinfo"
)

// version and commit are set at build time by make build:
// -ldflags "-X main.version=$(git describe ...) -X main.commit=$(git rev-parse HEAD)".
var (
	version = "dev"
	commit  = ""
)

func main() {
	// compose-go logs warnings of its own through logrus; labsync reports
	// the same problems as diagnostics with file and line.
	logrus.SetOutput(io.Discard)
	ctx, stop := signalContext()
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		fmt.Fprintln(os.Stderr, "labsync: stopping (send the signal again to exit at once)")
		cancel()
		<-ch
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// exitError carries an exit code without a message of its own: the
// command has already said what went wrong.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error, stderr io.Writer) int {
	var ee exitError
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "labsync: %s\nRun 'labsync help' for usage.\n", ue.msg)
		return 2
	default:
		fmt.Fprintf(stderr, "labsync: %v\n", err)
		return 1
	}
}

const usage = `labsync keeps a Testflinger lab's Docker host in the state committed to git.

Usage:
  labsync validate [flags] [PATH]   check a lab repository; exit 1 when it has errors
  labsync plan [flags] [PATH]       show what apply would change on this Docker host
  labsync apply [flags] [PATH]      converge this Docker host to the lab
  labsync serve --repo URL [flags]  run the daemon: poll git, take webhooks, converge, serve status
  labsync status [--server URL]     the lab at a glance, from a running daemon
  labsync version                   print the version

PATH is the lab repository's folder (default: the current folder).
Run 'labsync COMMAND -h' for a command's flags. Documentation: docs/cli.md.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	switch args[0] {
	case "validate":
		return runValidate(ctx, args[1:], stdout, stderr)
	case "plan":
		return runPlan(ctx, args[1:], stdout, stderr)
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "apply":
		return runApply(ctx, args[1:], stdout, stderr)
	case "plan-pull":
		return runPlanPull(ctx, os.Stdin, stdout)
	case "version", "--version":
		bi, _ := debug.ReadBuildInfo()
		fmt.Fprintln(stdout, buildinfo.Line("labsync", version, commit, bi))
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}
