package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/server"
)

// A pull request that breaks one SUT's file: the comment shows that SUT
// held and the rest planned; after the merge the other agents converge,
// and the held agent's container runs on untouched, shown as held with
// its file and line.
func TestServeHoldsABrokenSUT(t *testing.T) {
	gh := testenv.NewFakeGitHub(t)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"gh-token": "ghp_t0ken\n"})
	g := newGitLab(t, "--github-token-file", filepath.Join(dir, "gh-token"), "--github-api-url", gh.APIURL(), "--github-repo", "o/r")
	g.repo.Commit("beta and gamma", map[string]string{"sut/beta.conf": agentConfFor("beta"), "sut/gamma.conf": agentConfFor("gamma")})
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha", "beta", "gamma")
	d.settle()
	betaID := g.containers(t)["beta"].ID
	gammaID := g.containers(t)["gamma"].ID

	broken := strings.Replace(agentConfFor("beta"), "job_queues", "job_queus", 1)
	changed := strings.Replace(agentConfFor("gamma"), "polling_interval: 60", "polling_interval: 30", 1)
	files := map[string]string{"sut/beta.conf": broken, "sut/gamma.conf": changed}
	head := g.repo.CommitTo("refs/pull/12/head", "break beta, change gamma", files)
	prHook(t, d.url, g.secret, 12, head, "pr-12-opened")
	testenv.Eventually(t, 60*time.Second, "no plan on the pull request", func() bool {
		cs, st := gh.Snapshot()
		return len(cs[12]) == 1 && len(st) > 0
	})
	cs, st := gh.Snapshot()
	body := cs[12][0].Body
	for _, want := range []string{"1 SUT(s) held", "sut/beta.conf:3", "(holds <code>beta</code>)", "recreate | agent <code>gamma</code>", "kept as it runs"} {
		if !strings.Contains(body, want) {
			t.Errorf("plan comment lacks %q:\n%s", want, body)
		}
	}
	if last := st[len(st)-1]; last.State != "failure" || !strings.Contains(last.Description, "held") {
		t.Errorf("plan status %+v", last)
	}

	// Merged: gamma converges, beta's container runs on as it was.
	gh.Mu.Lock()
	gh.Pulls[head] = []int{12}
	gh.Mu.Unlock()
	testenv.Git(t, g.repo.Dir, "push", "-q", "origin", "HEAD:main")
	pushHook(t, d.url, g.secret, "refs/heads/main", "merge-12")
	testenv.Eventually(t, 60*time.Second, "gamma not recreated", func() bool {
		c := g.containers(t)["gamma"]
		return c.ID != gammaID && c.State == "running"
	})
	d.settle()
	if c := g.containers(t)["beta"]; c.ID != betaID || c.State != "running" {
		t.Errorf("held beta was touched: %+v", c)
	}
	var agents []server.ObjectView
	d.getJSON("/api/v1/agents", &agents)
	found := false
	for _, a := range agents {
		if a.Name == "beta" {
			found = a.Drift == "held" && strings.Contains(a.Reason, "sut/beta.conf:3")
		}
	}
	if !found {
		t.Errorf("/api/v1/agents does not show beta held with its file:line: %+v", agents)
	}
	if s := d.status(); s.Held != 1 {
		t.Errorf("status held = %d", s.Held)
	}
	testenv.Eventually(t, 30*time.Second, "no apply result on the pull request", func() bool {
		cs, _ := gh.Snapshot()
		return len(cs[12]) == 1 && strings.Contains(cs[12][0].Body, "held by errors in their files, left as they run")
	})
}
