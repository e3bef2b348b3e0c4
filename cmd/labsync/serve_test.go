package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/runtime"
	"github.com/labsync/labsync/server"
)

// daemon is `labsync serve` running in the test process against a git
// server and the real engine.
type daemon struct {
	t      testing.TB
	url    string
	cancel context.CancelFunc
	done   chan error
	out    *testenv.SyncBuffer
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startDaemon(t testing.TB, args ...string) *daemon {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{t: t, url: "http://" + addr, cancel: cancel, done: make(chan error, 1), out: &testenv.SyncBuffer{}}
	go func() {
		d.done <- run(ctx, append([]string{"serve", "--listen", addr, "--log-level", "debug", "--mqtt-listen", "127.0.0.1:0"}, args...), d.out, d.out)
	}()
	t.Cleanup(d.stop)
	testenv.Eventually(t, 60*time.Second, "daemon never became ready", func() bool {
		resp, err := http.Get(d.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

func (d *daemon) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("serve returned %v", err)
		}
	case <-time.After(60 * time.Second):
		d.t.Error("serve did not stop within 60s")
	}
	if d.t.Failed() {
		d.t.Logf("daemon output:\n%s", d.out.String())
	}
}

func (d *daemon) getJSON(path string, v any) {
	d.t.Helper()
	resp, err := http.Get(d.url + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		d.t.Fatalf("%s: %v", path, err)
	}
}

func (d *daemon) status() server.StatusView {
	var s server.StatusView
	d.getJSON("/api/v1/status", &s)
	return s
}

// settle waits until no pass runs and the last one succeeded.
func (d *daemon) settle() {
	d.t.Helper()
	testenv.Eventually(d.t, 60*time.Second, "the daemon did not settle", func() bool {
		s := d.status()
		return !s.Passing && s.LastResult == "ok"
	})
}

func (d *daemon) runs() []server.RunView {
	var r []server.RunView
	d.getJSON("/api/v1/runs", &r)
	return r
}

// pushHook posts the real push payload, its ref pointed at ref, signed with
// secret.
func pushHook(t testing.TB, url, secret, ref, delivery string) *http.Response {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "testdata", "github-webhooks", "push_payload.json"))
	if err != nil {
		t.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		t.Fatal(err)
	}
	payload["ref"] = ref
	body, _ := json.Marshal(payload)
	req, _ := http.NewRequest(http.MethodPost, url+"/hooks/github", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", server.Sign([]byte(secret), body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// gitLab is a lab repository on a git server, for a daemon to follow.
type gitLab struct {
	name   string
	repo   *testenv.Repo
	rt     *runtime.Client
	args   []string
	secret string
	// apiToken is the token of POST /api/v1/sync, in args as
	// --api-token-file.
	apiToken string
}

func newGitLab(t testing.TB, extraArgs ...string) *gitLab {
	t.Helper()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	gs := testenv.NewGitServer(t, "labsync", "git-t0ken")
	g := &gitLab{name: testenv.Name(t), rt: rt, secret: "hook-s3cret", apiToken: "api-t0ken"}
	testenv.CleanupLab(t, rt, g.name)
	g.repo = gs.NewRepo(t, "lab")
	g.repo.Commit("alpha", map[string]string{
		"lab.yaml":       fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image:\n    name: %[2]s\n  healthcheck: {test: [CMD, labsync-agent, healthcheck], interval: 1s}\n  update:\n    min_uptime: 200ms\n", g.name, image),
		"sut/alpha.conf": agentConfFor("alpha"),
	})
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"git-token": "git-t0ken\n", "hook-secret": g.secret + "\n", "api-token": g.apiToken + "\n"})
	g.args = append([]string{
		"--repo", g.repo.URL, "--git-username", "labsync", "--git-password-file", filepath.Join(dir, "git-token"),
		"--webhook-secret-file", filepath.Join(dir, "hook-secret"), "--data-dir", filepath.Join(dir, "data"),
		"--api-token-file", filepath.Join(dir, "api-token"),
		"--poll-interval", "1h", "--min-backoff", "200ms",
	}, extraArgs...)
	return g
}

// syncAPI posts /api/v1/sync with the bearer token ("" sends none) and
// returns the status code and body.
func syncAPI(t testing.TB, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/api/v1/sync", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// withoutFlag returns args without the flag name and its value.
func withoutFlag(args []string, name string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == name {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func agentConfFor(name string) string {
	return fmt.Sprintf("agent_id: %[1]s\nserver_address: http://tf:8000\njob_queues: [%[1]s]\npolling_interval: 60\n", name)
}

func (g *gitLab) containers(t testing.TB) map[string]container.Summary {
	t.Helper()
	cs, err := g.rt.API().ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+g.name))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]container.Summary{}
	for _, c := range cs {
		out[strings.TrimPrefix(c.Names[0], "/"+g.name+"-")] = c
	}
	return out
}

func (g *gitLab) waitRunning(t testing.TB, timeout time.Duration, names ...string) {
	t.Helper()
	testenv.Eventually(t, timeout, fmt.Sprintf("%v not all running", names), func() bool {
		cs := g.containers(t)
		for _, n := range names {
			if cs[n].State != "running" {
				return false
			}
		}
		return true
	})
}

func TestServeFollowsGitAndWebhooks(t *testing.T) {
	g := newGitLab(t)
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha")

	// A pushed commit plus a signed webhook (the poll is an hour away).
	g.repo.Commit("add beta", map[string]string{"sut/beta.conf": agentConfFor("beta")})
	if resp := pushHook(t, d.url, g.secret, "refs/heads/main", "delivery-1"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("push webhook: %s", resp.Status)
	}
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	d.settle()

	// A bad signature is refused and triggers nothing.
	runsBefore := len(d.runs())
	if resp := pushHook(t, d.url, "wrong-secret", "refs/heads/main", "delivery-2"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad signature: %s, want 401", resp.Status)
	}
	// A replayed delivery is ignored; a push to another ref too.
	if resp := pushHook(t, d.url, g.secret, "refs/heads/main", "delivery-1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("replay: %s, want 200 ignored", resp.Status)
	}
	if resp := pushHook(t, d.url, g.secret, "refs/tags/simple-tag", "delivery-3"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("tag push: %s", resp.Status)
	}
	// The API takes a sync only with its token.
	for _, token := range []string{"", "wrong", g.secret} {
		if code, body := syncAPI(t, d.url, token); code != http.StatusUnauthorized {
			t.Fatalf("sync with token %q: %d %s, want 401", token, code, body)
		}
	}
	if got := len(d.runs()); got != runsBefore || d.status().Passing {
		t.Fatalf("runs went from %d to %d after refused deliveries", runsBefore, got)
	}
	metrics := get(t, d.url+"/metrics")
	for _, want := range []string{`labsync_api_requests_total{endpoint="sync",result="bad-token"} 3`, `labsync_webhook_deliveries_total{result="bad-signature"} 1`, `labsync_webhook_deliveries_total{result="duplicate"} 1`, `labsync_webhook_deliveries_total{result="ignored"} 1`, `labsync_passes_total{result="ok"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	for _, want := range []string{`/hooks/github=signature`, `/hooks/generic=off`, `/api/v1/sync="bearer token"`} {
		if !strings.Contains(d.out.String(), want) {
			t.Errorf("the start log does not say %s", want)
		}
	}
	if code, body := syncAPI(t, d.url, g.apiToken); code != http.StatusAccepted {
		t.Fatalf("sync with the token: %d %s", code, body)
	}
	testenv.Eventually(t, 30*time.Second, "sync made no pass", func() bool { return len(d.runs()) > runsBefore && !d.status().Passing })
	if r := d.runs()[0]; !slices.Contains(r.Triggers, "api: sync") {
		t.Errorf("last pass triggered by %v, want api: sync", r.Triggers)
	}

	// An invalid commit is reported and not applied.
	// (An error in lab.yaml blocks the lab; one in a SUT's file would
	// only hold that SUT: TestServeHoldsABrokenSUT.)
	before := g.containers(t)
	labYAML, err := os.ReadFile(filepath.Join(g.repo.Dir, "lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := g.repo.Commit("typo", map[string]string{"lab.yaml": string(labYAML) + "prnue: {}\n", "sut/beta.conf": strings.Replace(agentConfFor("beta"), "polling_interval: 60", "polling_interval: 61", 1)})
	pushHook(t, d.url, g.secret, "refs/heads/main", "delivery-4")
	testenv.Eventually(t, 30*time.Second, "invalid revision not reported", func() bool { return d.status().Invalid == bad })
	runs := d.runs()
	if runs[0].Result != "invalid" || len(runs[0].Diagnostics) == 0 || !strings.Contains(runs[0].Diagnostics[0], "unknown key 'prnue'") {
		t.Errorf("last run = %+v", runs[0])
	}
	after := g.containers(t)
	for _, n := range []string{"alpha", "beta"} {
		if before[n].ID != after[n].ID || after[n].State != "running" {
			t.Errorf("%s changed after an invalid commit", n)
		}
	}
	// The fixing commit is applied.
	g.repo.Commit("fix typo, add gamma", map[string]string{"lab.yaml": string(labYAML), "sut/beta.conf": agentConfFor("beta"), "sut/gamma.conf": agentConfFor("gamma")})
	pushHook(t, d.url, g.secret, "refs/heads/main", "delivery-5")
	g.waitRunning(t, 60*time.Second, "alpha", "beta", "gamma")
	testenv.Eventually(t, 30*time.Second, "invalid revision still reported", func() bool { return d.status().Invalid == "" })
	if g.containers(t)["beta"].ID != before["beta"].ID {
		t.Error("beta was recreated, though its file is back to what runs")
	}

	// Stopped or removed by hand: back within seconds (Docker events).
	ctx := context.Background()
	d.settle()
	cs := g.containers(t)
	if err := g.rt.StopContainer(ctx, cs["alpha"].ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := g.rt.RemoveContainer(ctx, cs["beta"].ID); err != nil {
		t.Fatal(err)
	}
	g.waitRunning(t, 30*time.Second, "alpha", "beta")

	// labsync status shows the lab from the daemon's API.
	out, errOut, err := runCmd(t, "status", "--server", d.url)
	if err != nil || !strings.Contains(out, "Lab "+g.name) || !strings.Contains(out, "agent  gamma  running  healthy") {
		t.Errorf("labsync status: %v\n%s%s", err, out, errOut)
	}

	// A restarted daemon rebuilds its view from labels and changes nothing.
	d.settle()
	before = g.containers(t)
	d.stop()
	d2 := startDaemon(t, g.args...)
	testenv.Eventually(t, 30*time.Second, "restarted daemon made no pass", func() bool { return len(d2.runs()) > 0 && !d2.status().Passing })
	if r := d2.runs()[0]; r.Result != "ok" || r.Actions != 0 {
		t.Errorf("first pass after restart: %+v, want ok with 0 actions", r)
	}
	after = g.containers(t)
	for n, c := range before {
		if after[n].ID != c.ID {
			t.Errorf("%s was recreated by the restarted daemon", n)
		}
	}
}

// With events ignored (flap limit 0), the drift check brings a stopped
// container back.
func TestServeDriftCheckRepairs(t *testing.T) {
	g := newGitLab(t, "--flap-limit", "0", "--drift-schedule", "@every 2s")
	d := startDaemon(t, withoutFlag(g.args, "--api-token-file")...)
	// Without an API token the API takes no sync at all.
	if code, body := syncAPI(t, d.url, g.apiToken); code != http.StatusForbidden || !strings.Contains(body, "--api-token-file") {
		t.Errorf("sync with no API token configured: %d %s, want 403 naming --api-token-file", code, body)
	}
	g.waitRunning(t, 60*time.Second, "alpha")
	d.settle()
	if err := g.rt.StopContainer(context.Background(), g.containers(t)["alpha"].ID, time.Second); err != nil {
		t.Fatal(err)
	}
	g.waitRunning(t, 30*time.Second, "alpha")
	d.settle()
	found := false
	for _, r := range d.runs() {
		for _, tr := range r.Triggers {
			found = found || tr == "schedule: drift check"
		}
	}
	if !found {
		t.Error("no pass was triggered by the drift schedule")
	}
}

func get(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The status page, rendered by headless Chromium, shows the lab's objects.
// LABSYNC_SCREENSHOT names where the screenshot is saved.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if testenv.CI() {
			t.Fatal("chromium required under CI=true (scripts/test-setup.sh installs it)")
		}
		t.Skip("no chromium")
	}
	g := newGitLab(t)
	g.repo.Commit("beta", map[string]string{"sut/beta.conf": agentConfFor("beta")})
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	d.settle()

	shot := os.Getenv("LABSYNC_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "status.png")
	}
	profile := t.TempDir()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + profile, "--window-size=1280,900"}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// Chromium under load sometimes prints nothing: try a few times.
	var dom []byte
	for attempt := 1; attempt <= 3; attempt++ {
		out, err := exec.CommandContext(ctx, chromium, append(base, "--dump-dom", d.url+"/")...).Output()
		if err != nil {
			t.Fatalf("chromium --dump-dom: %v", err)
		}
		dom = out
		if strings.Contains(string(dom), "Recent passes") {
			break
		}
		t.Logf("chromium --dump-dom attempt %d printed %d bytes", attempt, len(dom))
	}
	for _, want := range []string{"labsync · " + g.name, "<b>alpha</b>", "<b>beta</b>", g.name + "-alpha", "running", "in sync", "Recent passes"} {
		if !strings.Contains(string(dom), want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	if out, err := exec.CommandContext(ctx, chromium, append(base, "--screenshot="+shot, d.url+"/")...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	// And at a phone's width.
	phone := strings.TrimSuffix(shot, ".png") + "-phone.png"
	phoneArgs := append(append([]string(nil), base[:len(base)-1]...), "--window-size=390,844", "--screenshot="+phone, d.url+"/")
	if out, err := exec.CommandContext(ctx, chromium, phoneArgs...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot (phone): %v\n%s", err, out)
	}
	for _, f := range []string{shot, phone} {
		png, err := os.ReadFile(f)
		if err != nil || len(png) < 1000 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
			t.Fatalf("screenshot %s: %d bytes, %v", f, len(png), err)
		}
	}
	t.Logf("status page screenshots: %s, %s", shot, phone)
}

// Without webhooks, the poll picks up a pushed commit.
func TestServePollsForNewCommits(t *testing.T) {
	g := newGitLab(t)
	// The API token can come from the environment too.
	t.Setenv("LABSYNC_API_TOKEN", "env-t0ken")
	args := append(withoutFlag(g.args, "--api-token-file"), "--poll-interval", "300ms")
	d := startDaemon(t, args...)
	if code, body := syncAPI(t, d.url, "env-t0ken"); code != http.StatusAccepted {
		t.Errorf("sync with LABSYNC_API_TOKEN: %d %s", code, body)
	}
	g.waitRunning(t, 60*time.Second, "alpha")
	g.repo.Commit("add beta", map[string]string{"sut/beta.conf": agentConfFor("beta")})
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	d.settle()
}

// prHook posts the real pull_request payload for number at head.
func prHook(t *testing.T, url, secret string, number int, head, delivery string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "testdata", "github-webhooks", "pull_request_opened.payload.json"))
	if err != nil {
		t.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		t.Fatal(err)
	}
	payload["number"] = number
	pr := payload["pull_request"].(map[string]any)
	pr["head"].(map[string]any)["sha"] = head
	pr["base"].(map[string]any)["ref"] = "main"
	body, _ := json.Marshal(payload)
	req, _ := http.NewRequest(http.MethodPost, url+"/hooks/github", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "pull_request")
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("X-Hub-Signature-256", server.Sign([]byte(secret), body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("pull_request webhook: %s", resp.Status)
	}
}

// A pull request gets its plan; once merged and applied, its result.
func TestServeCommentsOnPullRequests(t *testing.T) {
	gh := testenv.NewFakeGitHub(t)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"gh-token": "ghp_t0ken\n"})
	g := newGitLab(t, "--github-token-file", filepath.Join(dir, "gh-token"), "--github-api-url", gh.APIURL(), "--github-repo", "o/r")
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha")
	d.settle()

	// The pull request adds beta.
	testenv.Git(t, g.repo.Dir, "checkout", "-q", "-b", "add-beta")
	head := g.repo.Commit("add beta", map[string]string{"sut/beta.conf": agentConfFor("beta")})
	testenv.Git(t, g.repo.Dir, "push", "-q", "origin", "HEAD:refs/pull/5/head")
	prHook(t, d.url, g.secret, 5, head, "pr-5-opened")
	statusOf := func(context, sha string) *testenv.Status {
		_, st := gh.Snapshot()
		for i := len(st) - 1; i >= 0; i-- {
			if st[i].Context == context && st[i].SHA == sha {
				return &st[i]
			}
		}
		return nil
	}
	testenv.Eventually(t, 30*time.Second, "no plan on the pull request", func() bool {
		cs, _ := gh.Snapshot()
		return len(cs[5]) == 1 && statusOf("labsync/"+g.name+"/plan", head) != nil
	})
	cs, _ := gh.Snapshot()
	if st := statusOf("labsync/"+g.name+"/plan", head); !strings.Contains(cs[5][0].Body, "create | agent <code>beta</code>") || st.State != "success" {
		t.Fatalf("plan comment %q, status %+v", cs[5][0].Body, st)
	}
	if _, ok := g.containers(t)["beta"]; ok {
		t.Fatal("a pull request's content was applied")
	}

	// Merged: main moves to the pull request's head, the push webhook
	// applies it, and the pull request gets the result.
	gh.Mu.Lock()
	gh.Pulls[head] = []int{5}
	gh.Mu.Unlock()
	testenv.Git(t, g.repo.Dir, "push", "-q", "origin", "HEAD:main")
	pushHook(t, d.url, g.secret, "refs/heads/main", "merge-5")
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	testenv.Eventually(t, 30*time.Second, "no apply result on the pull request", func() bool {
		cs, _ := gh.Snapshot()
		return len(cs[5]) == 1 && strings.Contains(cs[5][0].Body, "applied `"+head[:12]+"`") && statusOf("labsync/"+g.name+"/apply", head) != nil
	})
	if st := statusOf("labsync/"+g.name+"/apply", head); st.State != "success" {
		t.Errorf("apply status = %+v", st)
	}
}
