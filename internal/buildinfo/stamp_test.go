package buildinfo_test

import (
	"context"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
)

// What make build does: -X main.version and main.commit reach what both
// commands print.
func TestCommandsAreStamped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds labsync and labsync-agent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	for _, name := range []string{"labsync", "labsync-agent"} {
		bin := filepath.Join(t.TempDir(), name)
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-X main.version=v9.8.7-1-g0123456 -X main.commit="+commit, "-o", bin, "./cmd/"+name)
		build.Dir = testenv.RepoRoot()
		build.Env = append(build.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		want := name + " v9.8.7-1-g0123456 (commit " + commit + ", " + goruntime.Version() + ", " + goruntime.GOOS + "/" + goruntime.GOARCH + ")\n"
		for _, arg := range []string{"version", "--version"} {
			out, err := exec.CommandContext(ctx, bin, arg).Output()
			if err != nil || string(out) != want {
				t.Errorf("%s %s = %q, %v; want %q", name, arg, out, err, want)
			}
		}
	}
}
