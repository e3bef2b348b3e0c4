package main

import (
	"os"
	"testing"

	"github.com/labsync/labsync/internal/testenv"
)

// TestMain runs the tests; in a child process that labsync serve (or a
// test) starts from its own binary, this test binary is labsync.
func TestMain(m *testing.M) {
	if os.Getenv(childRole) != "" {
		ctx, stop := signalContext()
		err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(exitCode(err, os.Stderr))
	}
	testenv.Main(m)
}
