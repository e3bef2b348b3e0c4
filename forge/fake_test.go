package forge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeGitHub speaks the REST endpoints labsync uses, with GitHub's
// response shapes, under /api/v3/ as GitHub Enterprise does.
type fakeGitHub struct {
	*httptest.Server
	mu       sync.Mutex
	comments map[int][]comment // issue number → comments
	nextID   int64
	statuses []status
	pulls    map[string][]int // commit → pull requests
	fail     map[string]int   // "METHOD path-prefix" → failures left
	rateHit  map[string]int   // same, answered 403 rate limited
	calls    int
}

type comment struct {
	ID   int64  `json:"id"`
	Body string `json:"body"`
	User struct {
		Login string `json:"login"`
	} `json:"user"`
	HTMLURL string `json:"html_url"`
}

type status struct {
	SHA, State, Context, Description string
}

func newFakeGitHub(t *testing.T) *fakeGitHub {
	f := &fakeGitHub{comments: map[int][]comment{}, pulls: map[string][]int{}, fail: map[string]int{}, rateHit: map[string]int{}, nextID: 1000}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeGitHub) inject(m map[string]int, method, prefix string) bool {
	for k, n := range m {
		if n > 0 && strings.HasPrefix(method+" "+"", strings.SplitN(k, " ", 2)[0]+" ") && strings.HasPrefix(k, method+" ") && strings.Contains(k, prefix) {
			m[k] = n - 1
			return true
		}
	}
	return false
}

func (f *fakeGitHub) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	path := strings.TrimPrefix(r.URL.Path, "/api/v3")
	for k, n := range f.fail {
		m, p, _ := strings.Cut(k, " ")
		if n > 0 && r.Method == m && strings.HasPrefix(path, p) {
			f.fail[k] = n - 1
			http.Error(w, `{"message":"Server Error"}`, http.StatusInternalServerError)
			return
		}
	}
	for k, n := range f.rateHit {
		m, p, _ := strings.Cut(k, " ")
		if n > 0 && r.Method == m && strings.HasPrefix(path, p) {
			f.rateHit[k] = n - 1
			w.Header().Set("X-RateLimit-Remaining", "0")
			w.Header().Set("X-RateLimit-Reset", "0")
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"message":"API rate limit exceeded","documentation_url":"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}`)
			return
		}
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet && path == "/user":
		fmt.Fprint(w, `{"login":"labsync-bot","id":1,"type":"Bot"}`)
	case len(parts) == 6 && parts[3] == "issues" && parts[5] == "comments":
		n, _ := strconv.Atoi(parts[4])
		if r.Method == http.MethodGet {
			json.NewEncoder(w).Encode(f.comments[n])
			return
		}
		var in struct{ Body string }
		json.NewDecoder(r.Body).Decode(&in)
		f.nextID++
		c := comment{ID: f.nextID, Body: in.Body, HTMLURL: fmt.Sprintf("https://github.com/o/r/pull/%d#issuecomment-%d", n, f.nextID)}
		c.User.Login = "labsync-bot"
		f.comments[n] = append(f.comments[n], c)
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(c)
	case r.Method == http.MethodPatch && len(parts) == 6 && parts[3] == "issues" && parts[4] == "comments":
		id, _ := strconv.ParseInt(parts[5], 10, 64)
		var in struct{ Body string }
		json.NewDecoder(r.Body).Decode(&in)
		for n, cs := range f.comments {
			for i := range cs {
				if cs[i].ID == id {
					f.comments[n][i].Body = in.Body
					json.NewEncoder(w).Encode(f.comments[n][i])
					return
				}
			}
		}
		http.NotFound(w, r)
	case r.Method == http.MethodPost && len(parts) == 5 && parts[3] == "statuses":
		var in struct{ State, Context, Description string }
		json.NewDecoder(r.Body).Decode(&in)
		f.statuses = append(f.statuses, status{SHA: parts[4], State: in.State, Context: in.Context, Description: in.Description})
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":1,"state":%q,"context":%q}`, in.State, in.Context)
	case r.Method == http.MethodGet && len(parts) == 6 && parts[3] == "commits" && parts[5] == "pulls":
		var out []map[string]any
		for _, n := range f.pulls[parts[4]] {
			out = append(out, map[string]any{"number": n, "state": "closed", "merged_at": "2026-11-26T01:00:00Z"})
		}
		if out == nil {
			out = []map[string]any{}
		}
		json.NewEncoder(w).Encode(out)
	default:
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
	}
}

func (f *fakeGitHub) snapshot() (map[int][]comment, []status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs := map[int][]comment{}
	for k, v := range f.comments {
		cs[k] = append([]comment(nil), v...)
	}
	return cs, append([]status(nil), f.statuses...)
}
