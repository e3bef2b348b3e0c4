package testenv

import (
	"crypto/subtle"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// GitServer serves the bare repositories under Root over git's smart HTTP
// protocol (git http-backend behind net/http/cgi) on loopback, with basic
// auth. It counts requests, so tests can see what a poll costs.
type GitServer struct {
	URL  string
	Root string
	// Requests counts every HTTP request; Fetches counts upload-pack
	// requests (those that transfer objects).
	Requests atomic.Int64
	Fetches  atomic.Int64
}

// NewGitServer starts a server for the test. user and password protect it.
func NewGitServer(t testing.TB, user, password string) *GitServer {
	t.Helper()
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		if CI() {
			t.Fatalf("git required under CI=true: %v", err)
		}
		t.Skipf("no git: %v", err)
	}
	gs := &GitServer{Root: t.TempDir()}
	h := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + gs.Root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gs.Requests.Add(1)
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/git-upload-pack") {
			gs.Fetches.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	gs.URL = srv.URL
	return gs
}

// Repo is a work tree whose pushes go to a bare repository of a GitServer.
type Repo struct {
	t    testing.TB
	Dir  string
	Bare string
	// URL is the bare repository's address on the server (no credentials).
	URL string
}

// NewRepo creates bare repository name.git on the server and a work tree
// pushing to it on branch main.
func (gs *GitServer) NewRepo(t testing.TB, name string) *Repo {
	t.Helper()
	r := &Repo{t: t, Dir: t.TempDir(), Bare: filepath.Join(gs.Root, name+".git"), URL: gs.URL + "/" + name + ".git"}
	Git(t, gs.Root, "init", "-q", "--bare", "-b", "main", r.Bare)
	Git(t, r.Bare, "config", "http.receivepack", "true")
	Git(t, r.Dir, "init", "-q", "-b", "main")
	Git(t, r.Dir, "remote", "add", "origin", r.Bare)
	return r
}

// Commit writes files ("" deletes one), commits them and pushes; it
// returns the new commit's hash.
func (r *Repo) Commit(msg string, files map[string]string) string {
	r.t.Helper()
	return r.CommitTo("refs/heads/main", msg, files)
}

// CommitTo is Commit pushed to ref (e.g. refs/pull/7/head) instead of
// main.
func (r *Repo) CommitTo(ref, msg string, files map[string]string) string {
	r.t.Helper()
	for name, content := range files {
		p := filepath.Join(r.Dir, name)
		if content == "" {
			if err := os.Remove(p); err != nil {
				r.t.Fatal(err)
			}
			continue
		}
		WriteFiles(r.t, r.Dir, map[string]string{name: content})
	}
	Git(r.t, r.Dir, "add", "-A")
	Git(r.t, r.Dir, "commit", "-q", "-m", msg)
	Git(r.t, r.Dir, "push", "-q", "origin", "HEAD:"+ref)
	return strings.TrimSpace(Git(r.t, r.Dir, "rev-parse", "HEAD"))
}

// Git runs git in dir with a fixed identity and returns its output.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Lab Tester", "GIT_AUTHOR_EMAIL=tester@lab.invalid",
		"GIT_COMMITTER_NAME=Lab Tester", "GIT_COMMITTER_EMAIL=tester@lab.invalid", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
