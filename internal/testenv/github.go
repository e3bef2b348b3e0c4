package testenv

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

// FakeGitHub speaks the REST endpoints labsync uses, with GitHub's
// response shapes, under /api/v3/ as GitHub Enterprise does. Fail and
// RateHit ("METHOD path-prefix" → count) make it answer 500 or a 403 rate
// limit that many times.
type FakeGitHub struct {
	*httptest.Server
	Mu       sync.Mutex
	Comments map[int][]Comment // issue number → comments
	nextID   int64
	Statuses []Status
	Pulls    map[string][]int // commit → pull requests
	Issues   []Issue
	// Open lists the open pull requests: number → head commit.
	Open map[int]string
	// PageSize is the number of comments a page lists (default 100).
	PageSize int
	Fail     map[string]int
	RateHit  map[string]int
	Calls    int
}

// Comment is an issue comment.
type Comment struct {
	ID   int64  `json:"id"`
	Body string `json:"body"`
	User struct {
		Login string `json:"login"`
	} `json:"user"`
	HTMLURL string `json:"html_url"`
}

// Issue is an issue opened through the API.
type Issue struct {
	Number int      `json:"number"`
	Title  string   `json:"title"`
	Body   string   `json:"body"`
	Labels []string `json:"-"`
	State  string   `json:"state"`
}

// Status is a commit status.
type Status struct {
	SHA, State, Context, Description string
}

// NewFakeGitHub starts the stand-in for the test.
func NewFakeGitHub(t testing.TB) *FakeGitHub {
	f := &FakeGitHub{Comments: map[int][]Comment{}, Pulls: map[string][]int{}, Fail: map[string]int{}, RateHit: map[string]int{}, nextID: 1000}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// APIURL is the REST root to give go-github.
func (f *FakeGitHub) APIURL() string { return f.URL + "/api/v3/" }

func (f *FakeGitHub) serve(w http.ResponseWriter, r *http.Request) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	f.Calls++
	path := strings.TrimPrefix(r.URL.Path, "/api/v3")
	for k, n := range f.Fail {
		m, p, _ := strings.Cut(k, " ")
		if n > 0 && r.Method == m && strings.HasPrefix(path, p) {
			f.Fail[k] = n - 1
			http.Error(w, `{"message":"Server Error"}`, http.StatusInternalServerError)
			return
		}
	}
	for k, n := range f.RateHit {
		m, p, _ := strings.Cut(k, " ")
		if n > 0 && r.Method == m && strings.HasPrefix(path, p) {
			f.RateHit[k] = n - 1
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
	case len(parts) == 4 && parts[3] == "issues":
		if r.Method == http.MethodPost {
			var in struct {
				Title, Body string
				Labels      []string
			}
			json.NewDecoder(r.Body).Decode(&in)
			is := Issue{Number: 100 + len(f.Issues), Title: in.Title, Body: in.Body, Labels: in.Labels, State: "open"}
			f.Issues = append(f.Issues, is)
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(issueJSON(is))
			return
		}
		want := r.URL.Query().Get("labels")
		out := []map[string]any{}
		for _, is := range f.Issues {
			for _, l := range is.Labels {
				if l == want && is.State == "open" {
					out = append(out, issueJSON(is))
				}
			}
		}
		json.NewEncoder(w).Encode(out)
	case r.Method == http.MethodGet && len(parts) == 4 && parts[3] == "pulls":
		out := []map[string]any{}
		for n, head := range f.Open {
			repo := map[string]any{"full_name": "o/r"}
			out = append(out, map[string]any{"number": n, "state": "open",
				"head": map[string]any{"sha": head, "repo": repo}, "base": map[string]any{"repo": repo}})
		}
		json.NewEncoder(w).Encode(out)
	case r.Method == http.MethodGet && path == "/user":
		fmt.Fprint(w, `{"login":"labsync-bot","id":1,"type":"Bot"}`)
	case len(parts) == 6 && parts[3] == "issues" && parts[5] == "comments":
		n, _ := strconv.Atoi(parts[4])
		if r.Method == http.MethodGet {
			// Pages of PageSize comments, linked as GitHub links them.
			all := f.Comments[n]
			page, _ := strconv.Atoi(r.URL.Query().Get("page"))
			page = max(page, 1)
			size := f.PageSize
			if size == 0 {
				size = 100
			}
			from := min((page-1)*size, len(all))
			to := min(from+size, len(all))
			if to < len(all) {
				w.Header().Set("Link", fmt.Sprintf(`<%s%s?page=%d&per_page=%d>; rel="next"`, f.URL, r.URL.Path, page+1, size))
			}
			out := all[from:to]
			if out == nil {
				out = []Comment{}
			}
			json.NewEncoder(w).Encode(out)
			return
		}
		var in struct{ Body string }
		json.NewDecoder(r.Body).Decode(&in)
		f.nextID++
		c := Comment{ID: f.nextID, Body: in.Body, HTMLURL: fmt.Sprintf("https://github.com/o/r/pull/%d#issuecomment-%d", n, f.nextID)}
		c.User.Login = "labsync-bot"
		f.Comments[n] = append(f.Comments[n], c)
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(c)
	case r.Method == http.MethodPatch && len(parts) == 6 && parts[3] == "issues" && parts[4] == "comments":
		id, _ := strconv.ParseInt(parts[5], 10, 64)
		var in struct{ Body string }
		json.NewDecoder(r.Body).Decode(&in)
		for n, cs := range f.Comments {
			for i := range cs {
				if cs[i].ID == id {
					f.Comments[n][i].Body = in.Body
					json.NewEncoder(w).Encode(f.Comments[n][i])
					return
				}
			}
		}
		http.NotFound(w, r)
	case r.Method == http.MethodPost && len(parts) == 5 && parts[3] == "statuses":
		var in struct{ State, Context, Description string }
		json.NewDecoder(r.Body).Decode(&in)
		f.Statuses = append(f.Statuses, Status{SHA: parts[4], State: in.State, Context: in.Context, Description: in.Description})
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":1,"state":%q,"context":%q}`, in.State, in.Context)
	case r.Method == http.MethodGet && len(parts) == 6 && parts[3] == "commits" && parts[5] == "pulls":
		var out []map[string]any
		for _, n := range f.Pulls[parts[4]] {
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

// Snapshot copies the comments and statuses received so far.
func (f *FakeGitHub) Snapshot() (map[int][]Comment, []Status) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	cs := map[int][]Comment{}
	for k, v := range f.Comments {
		cs[k] = append([]Comment(nil), v...)
	}
	return cs, append([]Status(nil), f.Statuses...)
}

func issueJSON(is Issue) map[string]any {
	labels := []map[string]string{}
	for _, l := range is.Labels {
		labels = append(labels, map[string]string{"name": l})
	}
	return map[string]any{"number": is.Number, "title": is.Title, "body": is.Body, "state": is.State, "labels": labels}
}

// AddComment adds a comment by login, as another user would post it.
func (f *FakeGitHub) AddComment(number int, login, body string) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	f.nextID++
	c := Comment{ID: f.nextID, Body: body}
	c.User.Login = login
	f.Comments[number] = append(f.Comments[number], c)
}
