package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/sandbox"
	"github.com/labsync/labsync/internal/testenv"
)

// asLabsync runs this test binary as labsync (see TestMain).
func asLabsync(args ...string) sandbox.Command {
	return sandbox.Command{Path: os.Args[0], Args: args, Env: childEnv("test")}
}

func sharedMountLab(t *testing.T, dir string) {
	t.Helper()
	chunk := []byte(strings.Repeat("z", 1<<20))
	if err := os.MkdirAll(filepath.Join(dir, "shared"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := os.WriteFile(filepath.Join(dir, "shared", fmt.Sprintf("part%02d.bin", i)), chunk, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 200 {
		fmt.Fprintf(&b, "  svc%03d:\n    image: redis\n    volumes: [\"./shared:/srv/shared:ro\"]\n", i)
	}
	testenv.WriteFiles(t, dir, map[string]string{"docker-compose.yaml": b.String()})
}

func manyErrors() string {
	var b strings.Builder
	b.WriteString("agents:\n  command:\n")
	for i := range 30000 {
		fmt.Fprintf(&b, "    - {n: %d}\n", i)
	}
	return b.String()
}

func mergeChainCompose(n int) string {
	var b strings.Builder
	b.WriteString("x-m0: &m0 {k0: v}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "x-m%d: &m%d\n  k%d: v\n  <<: [*m%d, *m%d]\n", i, i, i, i-1, i-1)
	}
	fmt.Fprintf(&b, "services:\n  a:\n    image: redis\n    labels:\n      <<: *m%d\n", n)
	return b.String()
}

// Each attack on loading is refused (or, for the shared mount, accepted)
// with a clear message, by a validate process held to 5 s of CPU and
// 200 MiB: a limit would end it and fail the test.
func TestHostileLabsWithinBounds(t *testing.T) {
	conf := "sut/dut.conf"
	cases := []struct {
		name  string
		files map[string]string
		setup func(*testing.T, string)
		code  int
		want  string
	}{
		{name: "self-including merge in lab.yaml", files: map[string]string{"lab.yaml": "agents: &a\n  dir: sut\n  <<: *a\n"},
			code: 1, want: "lab.yaml:3: error: alias *a includes itself"},
		{name: "self-including merge in the compose file", files: map[string]string{"docker-compose.yaml": "services:\n  r: &r\n    image: redis\n    <<: *r\n"},
			code: 1, want: "docker-compose.yaml:4: error: alias *r includes itself"},
		{name: "exponential merge chain", files: map[string]string{"docker-compose.yaml": mergeChainCompose(40)},
			code: 1, want: "expand to more than 100000 nodes"},
		{name: "tens of thousands of errors", files: map[string]string{"lab.yaml": manyErrors()},
			code: 1, want: "29900 more problems in this file are not shown"},
		{name: "200 services mount one 50 MB folder", setup: sharedMountLab, code: 0, want: "is valid: 1 agent(s), 200 service(s)"},
	}
	lim := sandbox.Limits{CPU: 5 * time.Second, Memory: 200 << 20, Wall: 2 * time.Minute}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			testenv.WriteFiles(t, dir, map[string]string{conf: agentConfFor("dut")})
			testenv.WriteFiles(t, dir, tc.files)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			res, err := sandbox.Run(context.Background(), asLabsync("validate", dir), lim)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("validate: %s in %s wall, %s CPU, peak RSS %d MiB", res.Describe(lim), res.Wall.Round(time.Millisecond), res.CPU.Round(time.Millisecond), res.PeakRSS>>20)
			if res.Limit != "" || res.ExitCode != tc.code {
				t.Fatalf("validate %s; want exit %d\n%s", res.Describe(lim), tc.code, res.Stderr)
			}
			if out := string(res.Stdout) + res.Stderr; !strings.Contains(out, tc.want) {
				t.Fatalf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

// validate stops within a second of SIGTERM, here while it waits for a
// git server that never answers.
func TestValidateStopsOnSIGTERM(t *testing.T) {
	asked := make(chan struct{}, 1)
	release := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case asked <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer stall.Close()
	defer close(release)
	cmd := exec.Command(os.Args[0], "validate", "--repo", stall.URL+"/lab.git", "--cache-dir", t.TempDir())
	cmd.Env = childEnv("test")
	out := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-asked:
	case err := <-done:
		t.Fatalf("validate ended before it reached the server: %v\n%s", err, out)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("validate never reached the git server")
	}
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Logf("validate ended %s after SIGTERM: %v", time.Since(sent).Round(time.Millisecond), err)
		if cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("exit 0 after SIGTERM:\n%s", out)
		}
	case <-time.After(time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("validate still running a second after SIGTERM:\n%s", out)
	}
}

// A pull request whose plan exceeds the planning process's limits is
// reported on the pull request as such; one that asks for more than the
// host policy allows gets the policy error; the daemon keeps converging
// the lab.
func TestServePullRequestPlanLimits(t *testing.T) {
	gh := testenv.NewFakeGitHub(t)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"gh-token": "ghp_t0ken\n"})
	g := newGitLab(t, "--github-token-file", filepath.Join(dir, "gh-token"), "--github-api-url", gh.APIURL(), "--github-repo", "o/r",
		"--pr-plan-memory", "48m")
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha")
	d.settle()

	// Pull request 7 brings 120 MiB for a service to mount: loading it
	// needs more memory than the planning process may use.
	testenv.Git(t, g.repo.Dir, "checkout", "-q", "-b", "big")
	big := map[string]string{"docker-compose.yaml": "services:\n  web:\n    image: nginx\n    volumes: [\"./www:/usr/share/nginx/html:ro\"]\n"}
	chunk := strings.Repeat("w", 1<<20-10)
	for i := range 120 {
		big[fmt.Sprintf("www/page%03d.html", i)] = chunk + fmt.Sprint(i)
	}
	bigHead := g.repo.CommitTo("refs/pull/7/head", "a big site", big)
	prHook(t, d.url, g.secret, 7, bigHead, "pr-7-opened")

	// Pull request 8 asks for a privileged service.
	testenv.Git(t, g.repo.Dir, "checkout", "-q", "main")
	testenv.Git(t, g.repo.Dir, "checkout", "-q", "-b", "priv")
	privHead := g.repo.CommitTo("refs/pull/8/head", "a privileged service", map[string]string{"docker-compose.yaml": "services:\n  tool:\n    image: tool:1\n    privileged: true\n"})
	prHook(t, d.url, g.secret, 8, privHead, "pr-8-opened")

	statusOf := func(number int, sha string) *testenv.Status {
		_, st := gh.Snapshot()
		for i := len(st) - 1; i >= 0; i-- {
			if st[i].Context == "labsync/"+g.name+"/plan" && st[i].SHA == sha {
				return &st[i]
			}
		}
		return nil
	}
	testenv.Eventually(t, 90*time.Second, "pull requests 7 and 8 not reported", func() bool {
		cs, _ := gh.Snapshot()
		return len(cs[7]) == 1 && len(cs[8]) == 1 && statusOf(7, bigHead) != nil && statusOf(8, privHead) != nil
	})
	cs, _ := gh.Snapshot()
	if body, st := cs[7][0].Body, statusOf(7, bigHead); !strings.Contains(body, "could not plan this revision") || !strings.Contains(body, "memory limit of 48 MiB") || st.State != "error" {
		t.Errorf("pull request 7: status %+v, comment:\n%s", st, body)
	}
	if body, st := cs[8][0].Body, statusOf(8, privHead); !strings.Contains(body, "--allow-privileged") || st.State != "failure" {
		t.Errorf("pull request 8: status %+v, comment:\n%s", st, body)
	}

	// The daemon carries on: a commit on main is applied.
	testenv.Git(t, g.repo.Dir, "checkout", "-q", "main")
	g.repo.Commit("add beta", map[string]string{"sut/beta.conf": agentConfFor("beta")})
	pushHook(t, d.url, g.secret, "refs/heads/main", "push-beta")
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	d.settle()
	if !strings.Contains(d.out.String(), "pull-request planning process failed") {
		t.Error("the daemon's log does not say the planning process failed")
	}
}
