package server

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Delivery IDs come from a request header (up to a megabyte): the dedupe
// keeps a bounded key per delivery, whatever the sender puts there.
func TestDeliveryIDsAreBounded(t *testing.T) {
	d := deliveries{max: 10}
	long := strings.Repeat("x", 64<<10)
	for i := range 100 {
		if !d.add(long + strconv.Itoa(i)) {
			t.Fatalf("long id %d taken for a duplicate", i)
		}
	}
	size := 0
	for id := range d.seen {
		size += len(id)
	}
	for _, id := range d.order {
		size += len(id)
	}
	if len(d.seen) != 10 || size > 2*10*maxDeliveryID {
		t.Errorf("remembers %d ids of %d bytes, want 10 ids of at most %d bytes", len(d.seen), size, 2*10*maxDeliveryID)
	}
	if d.add(long + "99") {
		t.Error("replayed long id taken for new")
	}
	if !d.add("0a9c4f1e-1b2c-11ef-8b5a-5c1c6e7d9f00") || d.add("0a9c4f1e-1b2c-11ef-8b5a-5c1c6e7d9f00") {
		t.Error("a GitHub delivery id is not deduplicated")
	}

	// The reply and the log do not echo a huge id back.
	s, _ := newTestServer(Options{Insecure: true})
	hdr := map[string]string{"X-GitHub-Event": "ping", "X-GitHub-Delivery": long}
	do(s, http.MethodPost, "/hooks/github", "{}", hdr)
	w := do(s, http.MethodPost, "/hooks/github", "{}", hdr)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "already received") || w.Body.Len() > 1024 {
		t.Errorf("replayed long delivery: %d, %d bytes of reply", w.Code, w.Body.Len())
	}
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("..", "testdata", "github-webhooks", name))
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestParseGitHubHookFixtures(t *testing.T) {
	const head = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
	pr := func(action string) Hook {
		return Hook{Event: "pull_request", Action: action, Number: 2, Head: head, Base: "master"}
	}
	for _, tc := range []struct {
		file, event string
		want        Hook
	}{
		{"ping_payload.json", "ping", Hook{Event: "ping"}},
		{"push_payload.json", "push", Hook{Event: "push", Ref: "refs/tags/simple-tag", After: "0000000000000000000000000000000000000000"}},
		{"push_with-organization.payload.json", "push", Hook{Event: "push", Ref: "refs/tags/simple-tag", After: "0000000000000000000000000000000000000000"}},
		{"pull_request_opened.payload.json", "pull_request", pr("opened")},
		{"pull_request_synchronize.payload.json", "pull_request", pr("synchronize")},
		{"pull_request_reopened.payload.json", "pull_request", pr("reopened")},
		{"pull_request_closed.payload.json", "pull_request", pr("closed")},
		{"issue_comment_created.payload.json", "issue_comment", Hook{Event: "issue_comment"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			body := readFixture(t, tc.file)
			for _, enc := range []struct{ ct, body string }{
				{"application/json", string(body)},
				{"application/x-www-form-urlencoded", "payload=" + url.QueryEscape(string(body))},
			} {
				got, err := ParseGitHubHook(tc.event, enc.ct, []byte(enc.body))
				if err != nil || got != tc.want {
					t.Errorf("%s: got %+v, %v; want %+v", enc.ct, got, err, tc.want)
				}
			}
		})
	}
}

func TestParseGitHubHookRejects(t *testing.T) {
	for _, tc := range []struct{ name, event, ct, body string }{
		{"push without ref", "push", "application/json", `{"after":"ec26c3e57ca3a959ca5aad62de7213c562f8c821"}`},
		{"push not json", "push", "application/json", `ref=main`},
		{"pull request without number", "pull_request", "application/json", `{"action":"opened"}`},
		{"pull request negative number", "pull_request", "application/json", `{"action":"opened","number":-1}`},
		{"form without payload", "push", "application/x-www-form-urlencoded", `ref=refs/heads/main`},
		{"form with bad escape", "push", "application/x-www-form-urlencoded", `payload=%zz`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := ParseGitHubHook(tc.event, tc.ct, []byte(tc.body)); err == nil {
				t.Errorf("accepted as %+v", h)
			}
		})
	}
}

// Commit IDs are hints: one that is not hex is dropped, not passed on into
// trigger reasons and logs.
func TestParseGitHubHookDropsBadCommitIDs(t *testing.T) {
	h, err := ParseGitHubHook("push", "application/json", []byte(`{"ref":"refs/heads/main","after":"$(reboot)"}`))
	if err != nil || h != (Hook{Event: "push", Ref: "refs/heads/main"}) {
		t.Errorf("push: %+v, %v", h, err)
	}
	h, err = ParseGitHubHook("pull_request", "application/json", []byte(`{"action":"opened","number":1,"pull_request":{"head":{"sha":"main\n","repo":{"full_name":"a/b"}},"base":{"repo":{"full_name":"a/b"}}}}`))
	if err != nil || h != (Hook{Event: "pull_request", Action: "opened", Number: 1}) {
		t.Errorf("pull request: %+v, %v", h, err)
	}
	// A head without a repository (a deleted fork) is a fork.
	h, _ = ParseGitHubHook("pull_request", "application/json", []byte(`{"action":"opened","number":1,"pull_request":{"head":{"repo":null}}}`))
	if !h.Fork {
		t.Errorf("head without a repository: %+v, want a fork", h)
	}
}

// FuzzParseGitHubHook feeds the parser what an unauthenticated sender could
// (with --insecure-webhooks) or GitHub does. Seeds are the real payloads in
// testdata/fuzz/FuzzParseGitHubHook.
func FuzzParseGitHubHook(f *testing.F) {
	f.Add("push", "application/json", []byte(`{"ref":"refs/heads/main","after":"ec26c3e57ca3a959ca5aad62de7213c562f8c821"}`))
	f.Add("pull_request", "application/x-www-form-urlencoded", []byte("payload="+url.QueryEscape(`{"action":"opened","number":7,"pull_request":{"head":{"sha":"ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}}`)))
	f.Fuzz(func(t *testing.T, event, contentType string, body []byte) {
		h, err := ParseGitHubHook(event, contentType, body)
		if err != nil {
			return
		}
		if h.Event != event {
			t.Fatalf("event %q parsed as %q", event, h.Event)
		}
		switch event {
		case "push":
			if h.Ref == "" || !commitID(h.After) && h.After != "" {
				t.Fatalf("push accepted as %+v", h)
			}
		case "pull_request":
			if h.Number <= 0 || !commitID(h.Head) && h.Head != "" {
				t.Fatalf("pull request accepted as %+v", h)
			}
		default:
			if h != (Hook{Event: event}) {
				t.Fatalf("event %q carries %+v", event, h)
			}
		}
		// The form encoding GitHub offers carries the same JSON.
		if mediaType(contentType) != "application/x-www-form-urlencoded" && len(body) > 0 {
			form := "payload=" + url.QueryEscape(string(body))
			got, err := ParseGitHubHook(event, "application/x-www-form-urlencoded", []byte(form))
			if err != nil || got != h {
				t.Fatalf("as a form: %+v, %v; as JSON: %+v", got, err, h)
			}
		}
	})
}
