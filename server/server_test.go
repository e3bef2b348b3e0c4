package server

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labsync/labsync/reconciler"
)

// fixedStatus is a StatusSource for handler tests.
type fixedStatus struct{ st reconciler.LabStatus }

func (f fixedStatus) Status() reconciler.LabStatus { return f.st }
func (f fixedStatus) Runs() []reconciler.Run       { return nil }

func TestSignature(t *testing.T) {
	body := []byte(`{"zen":"Keep it logically awesome."}`)
	sig := Sign([]byte("s3cret"), body)
	if !VerifySignature([]byte("s3cret"), body, sig) {
		t.Fatal("own signature rejected")
	}
	for _, bad := range []string{"", "sha256=", "sha1=" + sig[7:], sig[:len(sig)-2] + "00", "sha256=zz"} {
		if VerifySignature([]byte("s3cret"), body, bad) {
			t.Errorf("signature %q accepted", bad)
		}
	}
	if VerifySignature([]byte("other"), body, sig) {
		t.Error("signature of another secret accepted")
	}
}

func newTestServer(opts Options) (*Server, *[]string) {
	var triggers []string
	opts.Trigger = func(r string) { triggers = append(triggers, r) }
	opts.Status = fixedStatus{}
	opts.Branch = "main"
	return New(opts), &triggers
}

func do(s *Server, method, path, body string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	return w
}

func TestWebhooksNeedASecretUnlessInsecure(t *testing.T) {
	s, _ := newTestServer(Options{})
	if w := do(s, http.MethodPost, "/hooks/github", "{}", nil); w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
		t.Errorf("webhook served without a secret: %d", w.Code)
	}
	s, triggers := newTestServer(Options{Insecure: true})
	w := do(s, http.MethodPost, "/hooks/github", `{"ref":"refs/heads/main","after":"abc"}`, map[string]string{"X-GitHub-Event": "push"})
	if w.Code != http.StatusAccepted || len(*triggers) != 1 {
		t.Errorf("insecure push: %d, triggers %v", w.Code, *triggers)
	}
}

func TestGenericWebhookToken(t *testing.T) {
	s, triggers := newTestServer(Options{WebhookToken: []byte("t0k")})
	if w := do(s, http.MethodPost, "/hooks/generic", "", map[string]string{"Authorization": "Bearer wrong"}); w.Code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", w.Code)
	}
	if w := do(s, http.MethodPost, "/hooks/generic", "", nil); w.Code != http.StatusUnauthorized {
		t.Errorf("no token: %d", w.Code)
	}
	if w := do(s, http.MethodPost, "/hooks/generic", "{}", map[string]string{"Authorization": "Bearer t0k"}); w.Code != http.StatusAccepted || len(*triggers) != 1 {
		t.Errorf("right token: %d, triggers %v", w.Code, *triggers)
	}
}

func TestWebhookBodyIsBounded(t *testing.T) {
	s, triggers := newTestServer(Options{WebhookSecret: []byte("x")})
	w := do(s, http.MethodPost, "/hooks/github", strings.Repeat("a", MaxWebhookBody+1), map[string]string{"X-GitHub-Event": "push"})
	if w.Code != http.StatusRequestEntityTooLarge || len(*triggers) != 0 {
		t.Errorf("large body: %d, triggers %v", w.Code, *triggers)
	}
}

func TestReadyNeedsAFetch(t *testing.T) {
	s, _ := newTestServer(Options{})
	if w := do(s, http.MethodGet, "/readyz", "", nil); w.Code != http.StatusServiceUnavailable {
		t.Errorf("readyz before any fetch: %d", w.Code)
	}
	if w := do(s, http.MethodGet, "/healthz", "", nil); w.Code != http.StatusOK {
		t.Errorf("healthz: %d", w.Code)
	}
}

func TestFormEncodedPush(t *testing.T) {
	s, triggers := newTestServer(Options{WebhookSecret: []byte("k")})
	body := "payload=" + url.QueryEscape(`{"ref":"refs/heads/main","after":"abc"}`)
	w := do(s, http.MethodPost, "/hooks/github", body, map[string]string{
		"X-GitHub-Event": "push", "Content-Type": "application/x-www-form-urlencoded", "X-Hub-Signature-256": Sign([]byte("k"), []byte(body)),
	})
	if w.Code != http.StatusAccepted || len(*triggers) != 1 {
		t.Errorf("form push: %d %s, triggers %v", w.Code, w.Body, *triggers)
	}
}

// The real pull_request payloads reach the pipeline; closed ones do not.
func TestPullRequestWebhooksFromFixtures(t *testing.T) {
	var got []string
	// The fixtures' pull requests go into master.
	s := New(Options{Status: fixedStatus{}, Trigger: func(string) {}, Branch: "master", WebhookSecret: []byte("k"),
		PullRequest: func(n int, head string, fork bool) { got = append(got, fmt.Sprintf("#%d %s fork=%v", n, head, fork)) }})
	for _, f := range []string{"pull_request_opened", "pull_request_synchronize", "pull_request_reopened", "pull_request_closed"} {
		body, err := os.ReadFile(filepath.Join("..", "testdata", "github-webhooks", f+".payload.json"))
		if err != nil {
			t.Fatal(err)
		}
		w := do(s, http.MethodPost, "/hooks/github", string(body), map[string]string{
			"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": f, "X-Hub-Signature-256": Sign([]byte("k"), body), "Content-Type": "application/json"})
		if w.Code != http.StatusAccepted {
			t.Errorf("%s: %d %s", f, w.Code, w.Body)
		}
	}
	if len(got) != 3 {
		t.Fatalf("pipeline got %v, want opened, synchronize and reopened", got)
	}
	for _, g := range got {
		if !strings.HasPrefix(g, "#2 ") || !strings.Contains(g, "ec26c3e57ca3a959ca5aad62de7213c562f8c821") {
			t.Errorf("pipeline got %s, want #2 at the fixture's head", g)
		}
	}
}

func TestPullRequestIntoAnotherBranchIsIgnored(t *testing.T) {
	called := false
	s := New(Options{Status: fixedStatus{}, Trigger: func(string) {}, Branch: "main", WebhookSecret: []byte("k"),
		PullRequest: func(int, string, bool) { called = true }})
	body, _ := os.ReadFile(filepath.Join("..", "testdata", "github-webhooks", "pull_request_opened.payload.json"))
	w := do(s, http.MethodPost, "/hooks/github", string(body), map[string]string{"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": Sign([]byte("k"), body)})
	if w.Code != http.StatusAccepted || called || !strings.Contains(w.Body.String(), "not the tracked branch") {
		t.Errorf("pull request into master with main tracked: %d %s, planned %v", w.Code, w.Body, called)
	}
}
