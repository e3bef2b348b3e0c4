package forge_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labsync/labsync/forge"
	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
)

func TestDriftIsReportedOnceAndResolved(t *testing.T) {
	gh := testenv.NewFakeGitHub(t)
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("lab", map[string]string{"sut/alpha.conf": conf("alpha"), "sut/gamma.conf": conf("gamma")})
	merged := repo.Commit("add beta (#3)", map[string]string{"sut/beta.conf": conf("beta")})
	head := repo.Commit("docs", map[string]string{"README": "lab"})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	gh.Pulls[merged] = []int{3}
	client, _ := forge.New(forge.Options{BaseURL: gh.APIURL(), Owner: "o", Repo: "r", Token: "t"})
	state := filepath.Join(t.TempDir(), "drift.json")
	newReporter := func() *forge.DriftReporter {
		return forge.NewDriftReporter(forge.DriftOptions{GitHub: client, History: src, Lab: "l1", StateFile: state})
	}
	r := newReporter()
	ctx := context.Background()
	beta := forge.Drift{Object: "agent/beta", Reason: "start: stopped (Exited (1) 2 minutes ago)", Sources: []string{"sut/beta.conf"}}
	gamma := forge.Drift{Object: "agent/gamma", Reason: "create: name in use by a container labsync does not manage", Sources: []string{"sut/gamma.conf"}}

	for i, want := range []int{0, 1, 1} {
		if err := r.Check(ctx, head, []forge.Drift{beta}); err != nil {
			t.Fatal(err)
		}
		cs, _ := gh.Snapshot()
		if len(cs[3]) != want {
			t.Fatalf("check %d: %d comments on #3, want %d", i+1, len(cs[3]), want)
		}
	}
	// A restarted daemon does not report it again.
	r = newReporter()
	if err := r.Check(ctx, head, []forge.Drift{beta, gamma}); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx, head, []forge.Drift{beta, gamma}); err != nil {
		t.Fatal(err)
	}
	cs, _ := gh.Snapshot()
	if len(cs[3]) != 1 || !strings.Contains(cs[3][0].Body, "drift ⚠️") || !strings.Contains(cs[3][0].Body, "agent/beta") {
		t.Fatalf("comments on #3 after restart: %+v", cs[3])
	}
	// gamma's file came from no pull request: the labsync-drift issue.
	if len(gh.Issues) != 1 || gh.Issues[0].Labels[0] != forge.DriftLabel || len(cs[100]) != 1 || !strings.Contains(cs[100][0].Body, "agent/gamma") {
		t.Fatalf("issues %+v, comments %+v", gh.Issues, cs[100])
	}
	// Resolved: both reports are edited, nothing new is posted.
	if err := r.Check(ctx, head, nil); err != nil {
		t.Fatal(err)
	}
	cs, _ = gh.Snapshot()
	if len(cs[3]) != 1 || !strings.Contains(cs[3][0].Body, "resolved ✅") || !strings.Contains(cs[100][0].Body, "resolved ✅") || len(gh.Issues) != 1 {
		t.Fatalf("after resolution: #3 %+v, issue %+v", cs[3], cs[100])
	}
}
