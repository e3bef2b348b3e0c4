package gitsource_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
)

func TestFetchTreeAndChanges(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab", "s3cret")
	repo := gs.NewRepo(t, "lab")
	first := repo.Commit("add alpha", map[string]string{
		"sut/alpha.conf":          "agent_id: alpha\nserver_address: tf\njob_queues: [alpha]\n",
		"docker-compose.yaml":     "services:\n  redis:\n    image: redis:7\n",
		"images/agent/Dockerfile": "FROM scratch\n",
		"images/agent/run.sh":     "#!/bin/sh\n",
	})
	if err := os.Chmod(filepath.Join(repo.Dir, "images/agent/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(repo.Dir, "sut", "link.conf")); err != nil {
		t.Fatal(err)
	}
	second := repo.Commit("add beta, a link, exec bit", map[string]string{
		"sut/beta.conf": "agent_id: beta\nserver_address: tf\njob_queues: [beta]\n",
	})

	ctx := context.Background()
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "lab", Password: "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	head, err := src.RemoteHead(ctx)
	if err != nil || head != second {
		t.Fatalf("remote head = %s, %v; want %s", head, err, second)
	}
	if src.LocalHead() != "" {
		t.Fatal("nothing fetched yet, but a local head exists")
	}
	fetchesBefore := gs.Fetches.Load()
	got, err := src.Fetch(ctx)
	if err != nil || got != second {
		t.Fatalf("fetch = %s, %v", got, err)
	}
	if gs.Fetches.Load() == fetchesBefore {
		t.Error("fetch transferred nothing")
	}

	tree, err := src.Tree(second)
	if err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(tree, "sut/alpha.conf", "sut/beta.conf", "docker-compose.yaml", "images/agent/Dockerfile"); err != nil {
		t.Fatal(err)
	}
	ents, _ := fs.ReadDir(tree, "sut")
	for _, e := range ents {
		if e.Name() == "link.conf" && e.Type()&fs.ModeSymlink == 0 {
			t.Error("a symbolic link is not reported as one")
		}
	}
	info, err := fs.Stat(tree, "images/agent/run.sh")
	if err != nil || info.Mode().Perm()&0o111 == 0 {
		t.Errorf("run.sh mode = %v (%v), want executable", info.Mode(), err)
	}

	// The lab loader reads the tree like a folder, and refuses the link:
	// the SUT it would define is held.
	l, err := lab.Load(tree, lab.LoadOptions{DefaultName: "git-lab"})
	if err != nil || len(l.Held["link"]) == 0 || !strings.Contains(l.Diagnostics.String(), "sut/link.conf: error: is a symbolic link") {
		t.Errorf("load: %v\n%s", err, l.Diagnostics)
	}
	old, _ := src.Tree(first)
	if l, err := lab.Load(old, lab.LoadOptions{DefaultName: "git-lab"}); err != nil || len(l.SUTs) != 1 {
		t.Errorf("first revision: %v, %d SUTs", err, len(l.SUTs))
	}

	changed, err := src.Changed(first, second)
	sort.Strings(changed)
	if err != nil || strings.Join(changed, " ") != "images/agent/run.sh sut/beta.conf sut/link.conf" {
		t.Errorf("changed = %v, %v", changed, err)
	}
	if h, err := src.Resolve("main"); err != nil || h != second {
		t.Errorf("resolve main = %s, %v", h, err)
	}
	if h, err := src.Resolve(first[:10]); err != nil || h != first {
		t.Errorf("resolve short hash = %s, %v", h, err)
	}

	// A poll when nothing changed lists refs and fetches nothing.
	fetchesBefore = gs.Fetches.Load()
	if head, _ := src.RemoteHead(ctx); head != src.LocalHead() {
		t.Error("remote and local heads differ after fetch")
	}
	if gs.Fetches.Load() != fetchesBefore {
		t.Error("a head check fetched objects")
	}
}

func TestAuthFailureIsClear(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab", "s3cret")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("init", map[string]string{"README": "x"})
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Password: "wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.RemoteHead(context.Background())
	if err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("err = %v, want an authentication error", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Error("the error shows the password")
	}
}

func TestPullRequestRef(t *testing.T) {
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("init", map[string]string{"README": "x"})
	testenv.Git(t, repo.Dir, "checkout", "-q", "-b", "feature")
	pr := repo.Commit("feature", map[string]string{"sut/new.conf": "agent_id: new\n"})
	testenv.Git(t, repo.Dir, "push", "-q", "origin", "HEAD:refs/pull/7/head")
	src, _ := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	got, err := src.FetchRef(context.Background(), "refs/pull/7/head")
	if err != nil || got != pr {
		t.Fatalf("fetch pull ref = %s, %v; want %s", got, err, pr)
	}
	if _, err := src.FetchRef(context.Background(), "main; rm -rf /"); err == nil {
		t.Error("a malformed ref was accepted")
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:tok@github.com/org/lab.git":  "https://***@github.com/org/lab.git",
		"https://github.com/org/lab.git":           "https://github.com/org/lab.git",
		"git@github.com:org/lab.git":               "git@github.com:org/lab.git",
		"https://user:p@ss@github.com/org/lab.git": "https://***@github.com/org/lab.git",
		"https://github.com/org/lab.git?u=a@b":     "https://github.com/org/lab.git?u=a@b",
	} {
		if got := gitsource.Redact(in); got != want {
			t.Errorf("Redact(%s) = %s", in, got)
		}
	}
}

// A local path or file:// URL needs no server and no credentials.
func TestLocalRepository(t *testing.T) {
	gs := testenv.NewGitServer(t, "u", "p")
	repo := gs.NewRepo(t, "lab")
	want := repo.Commit("init", map[string]string{"sut/a.conf": "agent_id: a\n"})
	for _, url := range []string{repo.Bare, "file://" + repo.Bare} {
		src, err := gitsource.Open(gitsource.Options{URL: url, CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		got, err := src.Fetch(context.Background())
		if err != nil || got != want {
			t.Errorf("%s: fetch = %s, %v; want %s", url, got, err, want)
		}
	}
}
