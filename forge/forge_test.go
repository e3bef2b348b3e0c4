package forge_test

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/forge"
	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) { testenv.Main(m) }

func conf(name string) string {
	return fmt.Sprintf("agent_id: %[1]s\nserver_address: http://tf:8000\njob_queues: [%[1]s]\n", name)
}

// pullLab is a lab repository with pull requests, a fake GitHub and a
// pipeline planning against the real Docker host.
type pullLab struct {
	gh   *testenv.FakeGitHub
	repo *testenv.Repo
	p    *forge.Pipeline
	name string
	rt   *runtime.Client
}

func newPullLab(t *testing.T) *pullLab { return newPullLabPolling(t, 0) }

func newPullLabPolling(t *testing.T, interval time.Duration) *pullLab {
	t.Helper()
	rt := testenv.Docker(t)
	gs := testenv.NewGitServer(t, "u", "p")
	pl := &pullLab{gh: testenv.NewFakeGitHub(t), repo: gs.NewRepo(t, "lab"), name: "forge-lab", rt: rt}
	pl.repo.Commit("lab", map[string]string{
		"lab.yaml":       "name: " + pl.name + "\nagents:\n  image: {name: testflinger-agent:1}\n",
		"sut/alpha.conf": conf("alpha"),
	})
	src, err := gitsource.Open(gitsource.Options{URL: pl.repo.URL, CacheDir: t.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	client, err := forge.New(forge.Options{BaseURL: pl.gh.APIURL(), Owner: "o", Repo: "r", Token: "t0ken", MaxWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pl.p = forge.NewPipeline(forge.PipelineOptions{GitHub: client, Source: src, Docker: rt, Lab: pl.name, BlobURL: forge.BlobURL("https://github.com", "o", "r"), Interval: interval})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { pl.p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return pl
}

// push commits files on a branch and publishes it as refs/pull/n/head.
func (pl *pullLab) push(t *testing.T, n int, msg string, files map[string]string) string {
	t.Helper()
	if strings.TrimSpace(testenv.Git(t, pl.repo.Dir, "branch", "--show-current")) != fmt.Sprintf("pr%d", n) {
		testenv.Git(t, pl.repo.Dir, "checkout", "-q", "-B", fmt.Sprintf("pr%d", n), "main")
	}
	for name, content := range files {
		testenv.WriteFiles(t, pl.repo.Dir, map[string]string{name: content})
	}
	testenv.Git(t, pl.repo.Dir, "add", "-A")
	testenv.Git(t, pl.repo.Dir, "commit", "-q", "-m", msg)
	testenv.Git(t, pl.repo.Dir, "push", "-q", "-f", "origin", fmt.Sprintf("HEAD:refs/pull/%d/head", n))
	return strings.TrimSpace(testenv.Git(t, pl.repo.Dir, "rev-parse", "HEAD"))
}

func TestPullRequestPlanIsOneStickyComment(t *testing.T) {
	pl := newPullLab(t)
	head1 := pl.push(t, 7, "add beta", map[string]string{"sut/beta.conf": conf("beta")})
	pl.p.PullRequest(7, head1, false)
	testenv.Eventually(t, 30*time.Second, "no plan comment", func() bool {
		cs, st := pl.gh.Snapshot()
		return len(cs[7]) == 1 && len(st) == 1
	})
	head2 := pl.push(t, 7, "add gamma too", map[string]string{"sut/gamma.conf": conf("gamma")})
	pl.p.PullRequest(7, head2, false)
	testenv.Eventually(t, 30*time.Second, "comment not updated", func() bool {
		cs, st := pl.gh.Snapshot()
		return len(st) == 2 && strings.Contains(cs[7][0].Body, head2[:12])
	})
	pl.gh.Mu.Lock()
	callsBefore := pl.gh.Calls
	pl.gh.Mu.Unlock()
	head3 := pl.push(t, 7, "touch beta", map[string]string{"sut/beta.conf": conf("beta") + "polling_interval: 20\n"})
	pl.p.PullRequest(7, head3, false)
	testenv.Eventually(t, 30*time.Second, "third update missing", func() bool {
		_, st := pl.gh.Snapshot()
		return len(st) == 3
	})
	pl.gh.Mu.Lock()
	if n := pl.gh.Calls - callsBefore; n != 3 {
		t.Errorf("one pull-request update made %d GitHub calls, want 3 (list comments, edit, status)", n)
	}
	pl.gh.Mu.Unlock()
	cs, st := pl.gh.Snapshot()
	if len(cs[7]) != 1 {
		t.Fatalf("%d comments on #7, want one edited in place", len(cs[7]))
	}
	body := cs[7][0].Body
	for _, want := range []string{forge.Marker(pl.name), "create | agent <code>beta</code>", "create | agent <code>gamma</code>", "<details>"} {
		if !strings.Contains(body, want) {
			t.Errorf("comment lacks %q:\n%s", want, body)
		}
	}
	if s := st[1]; s.SHA != head2 || s.State != "success" || s.Context != "labsync/"+pl.name+"/plan" {
		t.Errorf("status = %+v", s)
	}
}

func TestInvalidPullRequestFailsWithFileAndLine(t *testing.T) {
	pl := newPullLab(t)
	head := pl.push(t, 8, "typo", map[string]string{"sut/beta.conf": strings.Replace(conf("beta"), "job_queues", "job_queue", 1)})
	pl.p.PullRequest(8, head, true)
	testenv.Eventually(t, 30*time.Second, "no failure status", func() bool {
		_, st := pl.gh.Snapshot()
		return len(st) == 1
	})
	cs, st := pl.gh.Snapshot()
	if st[0].State != "failure" || st[0].SHA != head {
		t.Errorf("status = %+v", st[0])
	}
	body := cs[8][0].Body
	link := fmt.Sprintf(`<a href="https://github.com/o/r/blob/%s/sut/beta.conf#L3"><code>sut/beta.conf:3</code></a>`, head)
	// One SUT's typo holds that SUT; the rest is planned.
	for _, want := range []string{"1 SUT(s) held", link, "unknown key 'job_queue' (did you mean 'job_queues'?)", "(holds <code>beta</code>)",
		"| <code>beta</code> | none |", "create | agent <code>alpha</code>", "from a fork: planned only"} {
		if !strings.Contains(body, want) {
			t.Errorf("comment lacks %q:\n%s", want, body)
		}
	}
	if !strings.Contains(st[0].Description, "1 SUT(s) held") {
		t.Errorf("status description %q", st[0].Description)
	}

	// An error in lab.yaml makes the whole revision invalid.
	head = pl.push(t, 10, "lab-wide typo", map[string]string{"lab.yaml": "agents:\n  memroy: 1g\n"})
	pl.p.PullRequest(10, head, false)
	testenv.Eventually(t, 30*time.Second, "no second status", func() bool {
		_, st := pl.gh.Snapshot()
		return len(st) == 2
	})
	cs, st = pl.gh.Snapshot()
	if body := cs[10][0].Body; st[1].State != "failure" || !strings.Contains(body, "This revision is invalid") || strings.Contains(body, "| Action |") {
		t.Errorf("status %+v, comment:\n%s", st[1], body)
	}
}

func TestMergedPullRequestGetsApplyResult(t *testing.T) {
	pl := newPullLab(t)
	pl.gh.Mu.Lock()
	pl.gh.Pulls["abc123"] = []int{9}
	pl.gh.Mu.Unlock()
	run := reconciler.Run{Revision: "abc123", Applied: "abc123", Result: reconciler.ResultFailed, Error: "1 of 2 action(s) did not succeed",
		Results: []reconciler.Result{
			{Action: reconciler.Action{Kind: reconciler.Create, ObjectKind: "agent", Object: "beta", Reasons: []string{"declared in sut/beta.conf, no container yet"}}, Status: reconciler.StatusOK},
			{Action: reconciler.Action{Kind: reconciler.Recreate, ObjectKind: "agent", Object: "alpha"}, Status: reconciler.StatusRolledBack, Error: "exited with code 1; last log lines: MAAS_API_KEY=s3cr3t-value | boom"},
		}}
	pl.p.Applied(run)
	testenv.Eventually(t, 30*time.Second, "apply not reported", func() bool {
		cs, st := pl.gh.Snapshot()
		return len(cs[9]) == 1 && len(st) == 1
	})
	cs, st := pl.gh.Snapshot()
	body := cs[9][0].Body
	if !strings.Contains(body, "❌ 1 of 2 action(s) did not succeed") || strings.Contains(body, "s3cr3t") || !strings.Contains(body, "MAAS_API_KEY=***") {
		t.Errorf("apply comment:\n%s", body)
	}
	if st[0].Context != "labsync/forge-lab/apply" || st[0].State != "failure" {
		t.Errorf("status = %+v", st[0])
	}
}

// GitHub answering 500 or a rate-limit 403 is retried, then given up
// without blocking anything.
func TestGitHubErrorsAreRetriedThenGivenUp(t *testing.T) {
	pl := newPullLab(t)
	head := pl.push(t, 10, "add beta", map[string]string{"sut/beta.conf": conf("beta")})
	pl.gh.Mu.Lock()
	pl.gh.Fail["GET /repos/o/r/issues/10/comments"] = 2
	pl.gh.RateHit["POST /repos/o/r/statuses/"] = 1
	pl.gh.Mu.Unlock()
	start := time.Now()
	pl.p.PullRequest(10, head, false)
	if time.Since(start) > 10*time.Millisecond {
		t.Error("queueing a pull request waited")
	}
	testenv.Eventually(t, 30*time.Second, "not retried to success", func() bool {
		cs, st := pl.gh.Snapshot()
		return len(cs[10]) == 1 && len(st) == 1
	})
	// Now GitHub stays down: the plan is given up after the retries.
	pl.gh.Mu.Lock()
	pl.gh.Fail["GET /repos/o/r/issues/10/comments"] = 1000
	callsBefore := pl.gh.Calls
	pl.gh.Mu.Unlock()
	pl.p.PullRequest(10, head, false)
	testenv.Eventually(t, 30*time.Second, "never gave up", func() bool {
		pl.gh.Mu.Lock()
		defer pl.gh.Mu.Unlock()
		return pl.gh.Fail["GET /repos/o/r/issues/10/comments"] == 1000-4 // first try and 3 retries
	})
	pl.gh.Mu.Lock()
	// Listing the comments: the first try and 3 retries; the status is
	// still set.
	if pl.gh.Calls-callsBefore != 5 {
		t.Errorf("%d calls while GitHub was down, want 5", pl.gh.Calls-callsBefore)
	}
	pl.gh.Mu.Unlock()
}

// The comments as GitHub shows them, reviewed in the diff.
func TestRenderedCommentsGolden(t *testing.T) {
	pl := newPullLab(t)
	head := pl.push(t, 11, "three SUTs", map[string]string{
		"sut/alpha.conf": conf("alpha") + "polling_interval: 30\n",
		"sut/beta.conf":  conf("beta"),
		"sut/gamma.conf": conf("gamma"),
	})
	res, err := pl.p.Plan(context.Background(), 11, forge.PullJobForTest(head))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.ReplaceAll(res.Body, head, "HEAD_SHA")
	body = strings.ReplaceAll(body, head[:12], "HEAD_SHA")
	testenv.Golden(t, filepath.Join("testdata", "plan-3-suts.md"), body, *update)

	bad := pl.push(t, 12, "typo", map[string]string{"sut/beta.conf": strings.Replace(conf("beta"), "job_queues", "job_queue", 1), "sut/README": "x"})
	res, err = pl.p.Plan(context.Background(), 12, forge.PullJobForTest(bad))
	if err != nil {
		t.Fatal(err)
	}
	body = strings.ReplaceAll(strings.ReplaceAll(res.Body, bad, "HEAD_SHA"), bad[:12], "HEAD_SHA")
	testenv.Golden(t, filepath.Join("testdata", "plan-held.md"), body, *update)

	apply := forge.RenderApply(forge.ApplyView{Lab: "forge-lab", Revision: "0123456789abcdef", Results: []reconciler.Result{
		{Action: reconciler.Action{Kind: reconciler.Recreate, ObjectKind: "agent", Object: "alpha", Reasons: []string{"sut/alpha.conf changed (polling_interval)"}}, Status: reconciler.StatusOK},
		{Action: reconciler.Action{Kind: reconciler.Create, ObjectKind: "agent", Object: "beta", Reasons: []string{"declared in sut/beta.conf, no container yet"}}, Status: reconciler.StatusOK},
		{Action: reconciler.Action{Kind: reconciler.Create, ObjectKind: "agent", Object: "gamma"}, Status: reconciler.StatusFailed, Error: "exited with code 2; last log lines: token=abc | device unreachable"},
	}})
	testenv.Golden(t, filepath.Join("testdata", "apply.md"), apply, *update)
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", forge.MaxCommentSize)
	got := forge.Truncate(long)
	if len(got) > forge.MaxCommentSize || !strings.Contains(got, "over GitHub's 65536-character limit") {
		t.Errorf("truncated to %d bytes", len(got))
	}
	inBlock := "<details><summary>Full plan</summary>\n\n<pre>\n" + strings.Repeat("line\n", forge.MaxCommentSize)
	got = forge.Truncate(inBlock)
	if len(got) > forge.MaxCommentSize || !strings.HasSuffix(strings.TrimSpace(got), "shows everything)") ||
		strings.Count(got, "<pre>") != strings.Count(got, "</pre>") || strings.Count(got, "<details>") != strings.Count(got, "</details>") {
		t.Errorf("cut inside a block leaves it open: ...%s", got[len(got)-200:])
	}
}

// Without webhooks, polling finds pull requests whose head moved.
func TestOpenPullRequestsArePolled(t *testing.T) {
	pl := newPullLabPolling(t, 200*time.Millisecond)
	head := pl.push(t, 13, "add beta", map[string]string{"sut/beta.conf": conf("beta")})
	pl.gh.Mu.Lock()
	pl.gh.Open = map[int]string{13: head}
	pl.gh.Mu.Unlock()
	testenv.Eventually(t, 30*time.Second, "open pull request not planned", func() bool {
		cs, _ := pl.gh.Snapshot()
		return len(cs[13]) == 1
	})
	head2 := pl.push(t, 13, "add gamma", map[string]string{"sut/gamma.conf": conf("gamma")})
	pl.gh.Mu.Lock()
	pl.gh.Open[13] = head2
	pl.gh.Mu.Unlock()
	testenv.Eventually(t, 30*time.Second, "new head not planned", func() bool {
		cs, _ := pl.gh.Snapshot()
		return len(cs[13]) == 1 && strings.Contains(cs[13][0].Body, head2[:12])
	})
}

// File names from a pull request cannot inject Markdown or links.
func TestFileNamesAreEscaped(t *testing.T) {
	body := forge.RenderPlan(forge.PlanView{Lab: "l", Head: "abc", BlobURL: "https://github.com/o/r/blob/",
		Diagnostics: lab.Diagnostics{{File: "sut/a`](https://evil.example/) `b", Line: 2, Message: "x"}}})
	if strings.Contains(body, "](https://evil.example/)") || strings.Contains(body, `href="https://evil.example`) {
		t.Errorf("injected link:\n%s", body)
	}
}

// The bot's comment is found on a later page, among other users' comments
// (one quoting the marker), whatever the case of its login.
func TestStickyCommentAcrossPagesAndUsers(t *testing.T) {
	gh := testenv.NewFakeGitHub(t)
	gh.PageSize = 2
	marker := forge.Marker("l1")
	gh.AddComment(4, "alice", "looks good")
	gh.AddComment(4, "bob", "quoting the bot: "+marker+" old plan")
	gh.AddComment(4, "carol", "+1")
	gh.AddComment(4, "LabSync-Bot", marker+"\nold plan")
	client, _ := forge.New(forge.Options{BaseURL: gh.APIURL(), Owner: "o", Repo: "r", Token: "t", Login: "labsync-bot"})
	created, err := client.UpsertComment(context.Background(), 4, marker, marker+"\nnew plan")
	if err != nil || created {
		t.Fatalf("created %v, err %v; want the bot's comment on page 2 edited", created, err)
	}
	cs, _ := gh.Snapshot()
	if len(cs[4]) != 4 || cs[4][3].Body != marker+"\nnew plan" || !strings.Contains(cs[4][1].Body, "old plan") {
		t.Errorf("comments = %+v", cs[4])
	}
}

func TestParseRepo(t *testing.T) {
	for in, want := range map[string]string{
		"o/r":                        "o/r",
		"https://github.com/o/r.git": "o/r",
		"https://x-access-token:ghs_abc@github.com/o/r.git": "o/r",
		"https://oauth2:abc@github.com/o/r":                 "o/r",
		"git@github.com:o/r.git":                            "o/r",
		"https://ghe.example.com/team/lab-host-1.git":       "team/lab-host-1",
	} {
		o, r, err := forge.ParseRepo(in)
		if err != nil || o+"/"+r != want {
			t.Errorf("ParseRepo(%q) = %s/%s, %v; want %s", in, o, r, err, want)
		}
	}
	if _, _, err := forge.ParseRepo("https://user:s3cret@host/"); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v", err)
	}
}
