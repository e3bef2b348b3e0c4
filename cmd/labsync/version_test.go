package main

import (
	"context"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"
)

func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		out, _, err := runCmd(t, arg)
		if err != nil || !strings.HasPrefix(out, "labsync ") || !strings.Contains(out, goruntime.Version()) {
			t.Errorf("labsync %s = %q, %v", arg, out, err)
		}
	}
}

// What make build does: -X main.version and main.commit reach the output.
func TestVersionStampedByLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds labsync")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	bin := filepath.Join(t.TempDir(), "labsync")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-X main.version=v9.8.7-1-g0123456 -X main.commit="+commit, "-o", bin, ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "labsync v9.8.7-1-g0123456 (commit " + commit + ", " + goruntime.Version() + ", " + goruntime.GOOS + "/" + goruntime.GOARCH + ")\n"
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.CommandContext(ctx, bin, arg).Output()
		if err != nil || string(out) != want {
			t.Errorf("labsync %s = %q, %v; want %q", arg, out, err, want)
		}
	}
}
