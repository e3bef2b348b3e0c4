package main

import (
	"bytes"
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
		var out bytes.Buffer
		if code := run(context.Background(), []string{arg}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "labsync-agent ") {
			t.Errorf("labsync-agent %s: exit %d, %q", arg, code, out.String())
		}
	}
}

// What make build and make labsync-agent do: -X main.version and
// main.commit reach the output.
func TestVersionStampedByLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds labsync-agent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	bin := filepath.Join(t.TempDir(), "labsync-agent")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-X main.version=v9.8.7 -X main.commit="+commit, "-o", bin, ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "labsync-agent v9.8.7 (commit " + commit + ", " + goruntime.Version() + ", " + goruntime.GOOS + "/" + goruntime.GOARCH + ")\n"
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil || string(out) != want {
		t.Errorf("labsync-agent version = %q, %v; want %q", out, err, want)
	}
}
