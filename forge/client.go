// Package forge is labsync on GitHub: one sticky comment per lab per pull
// request (found by a hidden marker and the bot's login, edited in place),
// commit statuses, and the pull-request plan and apply-result pipeline.
// GitHub being slow or down never blocks or fails a pass: calls are retried
// a bounded number of times, then given up.
package forge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/labsync/labsync/internal/redact"
)

// MaxCommentSize is GitHub's limit on a comment body.
const MaxCommentSize = 65536

// Options configure a Client.
type Options struct {
	// Token is a personal or installation access token.
	Token string
	// BaseURL is the REST API root for GitHub Enterprise (or a test
	// server), e.g. https://ghe.example.com/api/v3/. Empty: api.github.com.
	BaseURL string
	// Owner and Repo name the lab repository.
	Owner, Repo string
	// Login is the bot's login, used to find its own comments; empty: the
	// token's user (one GET /user).
	Login string
	// Retries after a 5xx or a rate limit (default 3); MaxWait caps one
	// wait, Retry-After included (default 30s).
	Retries int
	MaxWait time.Duration
	Logger  *slog.Logger
}

// Client talks to one repository on GitHub.
type Client struct {
	gh    *github.Client
	owner string
	repo  string
	login string
	log   *slog.Logger
	rt    *retrying
}

// New makes a client. It makes no request.
func New(o Options) (*Client, error) {
	if o.Owner == "" || o.Repo == "" {
		return nil, errors.New("forge: owner and repository are required")
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.MaxWait == 0 {
		o.MaxWait = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	rt := &retrying{next: http.DefaultTransport, retries: o.Retries, maxWait: o.MaxWait, log: o.Logger}
	gh := github.NewClient(&http.Client{Transport: rt})
	if o.Token != "" {
		gh = gh.WithAuthToken(o.Token)
	}
	if o.BaseURL != "" {
		base := strings.TrimRight(o.BaseURL, "/") + "/"
		var err error
		if gh, err = gh.WithEnterpriseURLs(base, base); err != nil {
			return nil, fmt.Errorf("forge: base URL: %w", err)
		}
	}
	return &Client{gh: gh, owner: o.Owner, repo: o.Repo, login: o.Login, log: o.Logger, rt: rt}, nil
}

// Calls returns the number of HTTP requests made, retries included.
func (c *Client) Calls() int64 { return c.rt.calls.Load() }

// ParseRepo splits "owner/repo" or a GitHub URL of the repository
// (credentials in it are dropped).
func ParseRepo(spec string) (owner, repo string, err error) {
	s := spec
	if u, perr := url.Parse(spec); perr == nil && u.Host != "" {
		u.User = nil
		s = u.Host + u.Path
	}
	s = strings.TrimSuffix(strings.TrimSuffix(s, "/"), ".git")
	if i := strings.Index(s, "github.com"); i >= 0 {
		s = strings.TrimLeft(s[i+len("github.com"):], ":/")
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || parts[len(parts)-2] == "" || parts[len(parts)-1] == "" {
		return "", "", fmt.Errorf("%q is not owner/repo", redact.String(spec))
	}
	return parts[len(parts)-2], parts[len(parts)-1], nil
}

func (c *Client) botLogin(ctx context.Context) (string, error) {
	if c.login != "" {
		return c.login, nil
	}
	u, _, err := c.gh.Users.Get(ctx, "")
	if err != nil {
		return "", fmt.Errorf("github: who am I (with an app installation token, give --github-login <app-slug>[bot]): %w", err)
	}
	c.login = u.GetLogin()
	return c.login, nil
}

// UpsertComment makes sure pull request (or issue) number has one comment
// of the bot's holding marker, with body: it edits the one it finds, or
// creates it. body must contain marker.
func (c *Client) UpsertComment(ctx context.Context, number int, marker, body string) (created bool, err error) {
	login, err := c.botLogin(ctx)
	if err != nil {
		return false, err
	}
	body = Truncate(body)
	opts := &github.IssueListCommentsOptions{ListOptions: github.ListOptions{PerPage: 100}}
	for {
		comments, resp, err := c.gh.Issues.ListComments(ctx, c.owner, c.repo, number, opts)
		if err != nil {
			return false, fmt.Errorf("github: list comments of #%d: %w", number, err)
		}
		for _, cm := range comments {
			if strings.EqualFold(cm.GetUser().GetLogin(), login) && strings.Contains(cm.GetBody(), marker) {
				if cm.GetBody() == body {
					return false, nil
				}
				if _, _, err := c.gh.Issues.EditComment(ctx, c.owner, c.repo, cm.GetID(), &github.IssueComment{Body: &body}); err != nil {
					return false, fmt.Errorf("github: edit comment on #%d: %w", number, err)
				}
				return false, nil
			}
		}
		if resp == nil || resp.NextPage == 0 {
			break
		}
		opts.Page = resp.NextPage
	}
	if _, _, err := c.gh.Issues.CreateComment(ctx, c.owner, c.repo, number, &github.IssueComment{Body: &body}); err != nil {
		return false, fmt.Errorf("github: comment on #%d: %w", number, err)
	}
	return true, nil
}

// Commit status states.
const (
	StatePending = "pending"
	StateSuccess = "success"
	StateFailure = "failure"
	StateError   = "error"
)

// SetStatus sets a commit status; description is cut to GitHub's 140
// characters.
func (c *Client) SetStatus(ctx context.Context, sha, context_, state, description string) error {
	if r := []rune(description); len(r) > 140 {
		description = string(r[:137]) + "..."
	}
	_, _, err := c.gh.Repositories.CreateStatus(ctx, c.owner, c.repo, sha, &github.RepoStatus{State: &state, Context: &context_, Description: &description})
	if err != nil {
		return fmt.Errorf("github: status %s on %s: %w", context_, sha, err)
	}
	return nil
}

// PullsForCommit returns the pull requests that brought a commit.
func (c *Client) PullsForCommit(ctx context.Context, sha string) ([]int, error) {
	prs, _, err := c.gh.PullRequests.ListPullRequestsWithCommit(ctx, c.owner, c.repo, sha, &github.ListOptions{PerPage: 20})
	if err != nil {
		return nil, fmt.Errorf("github: pull requests of %s: %w", sha, err)
	}
	var out []int
	for _, pr := range prs {
		out = append(out, pr.GetNumber())
	}
	return out, nil
}

// OpenPull is an open pull request.
type OpenPull struct {
	Number int
	Head   string
	// Base is the branch it would merge into.
	Base string
	Fork bool
}

// OpenPulls lists the open pull requests (for labs GitHub cannot reach
// with webhooks).
func (c *Client) OpenPulls(ctx context.Context) ([]OpenPull, error) {
	var out []OpenPull
	opts := &github.PullRequestListOptions{State: "open", ListOptions: github.ListOptions{PerPage: 100}}
	for {
		prs, resp, err := c.gh.PullRequests.List(ctx, c.owner, c.repo, opts)
		if err != nil {
			return nil, fmt.Errorf("github: open pull requests: %w", err)
		}
		for _, pr := range prs {
			out = append(out, OpenPull{Number: pr.GetNumber(), Head: pr.GetHead().GetSHA(), Base: pr.GetBase().GetRef(),
				Fork: pr.GetHead().GetRepo().GetFullName() != pr.GetBase().GetRepo().GetFullName()})
		}
		if resp == nil || resp.NextPage == 0 {
			return out, nil
		}
		opts.Page = resp.NextPage
	}
}

// retrying retries requests that met a server error or a rate limit, a
// bounded number of times, honouring Retry-After and X-RateLimit-Reset up
// to a cap.
type retrying struct {
	next    http.RoundTripper
	retries int
	maxWait time.Duration
	log     *slog.Logger
	calls   atomic.Int64
}

func (r *retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && req.Body != nil {
			if req.GetBody == nil {
				return nil, errors.New("forge: cannot retry a request whose body cannot be replayed")
			}
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
		r.calls.Add(1)
		resp, err := r.next.RoundTrip(req)
		wait, retry := r.shouldRetry(resp, err, attempt)
		// A create that failed may still have been done: a POST is
		// retried only when GitHub said it did not take it (rate limit).
		// Statuses are safe to set twice.
		if retry && req.Method == http.MethodPost && !strings.Contains(req.URL.Path, "/statuses/") && (resp == nil || resp.StatusCode >= 500) {
			retry = false
		}
		if !retry || attempt >= r.retries {
			return resp, err
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
		}
		r.log.Warn("github request will be retried", "method", req.Method, "path", req.URL.Path, "after", wait, "attempt", attempt+1)
		select {
		case <-req.Context().Done():
			return nil, req.Context().Err()
		case <-time.After(wait):
		}
	}
}

func (r *retrying) shouldRetry(resp *http.Response, err error, attempt int) (time.Duration, bool) {
	backoff := time.Duration(float64(500*time.Millisecond) * float64(int(1)<<attempt) * (0.8 + 0.4*rand.Float64()))
	if err != nil {
		return min(backoff, r.maxWait), true
	}
	switch {
	case resp.StatusCode >= 500:
		return min(backoff, r.maxWait), true
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusTooManyRequests:
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, err := strconv.Atoi(s); err == nil {
				return min(time.Duration(secs)*time.Second, r.maxWait), true
			}
		}
		if resp.Header.Get("X-RateLimit-Remaining") == "0" {
			if reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64); err == nil {
				return min(max(time.Until(time.Unix(reset, 0)), time.Second), r.maxWait), true
			}
			return min(backoff, r.maxWait), true
		}
	}
	return 0, false
}

// DriftLabel marks the issue that collects drift no pull request explains.
const DriftLabel = "labsync-drift"

// DriftIssue returns the open issue labelled labsync-drift, opening one
// when there is none.
func (c *Client) DriftIssue(ctx context.Context, labName string) (int, error) {
	issues, _, err := c.gh.Issues.ListByRepo(ctx, c.owner, c.repo, &github.IssueListByRepoOptions{State: "open", Labels: []string{DriftLabel}})
	if err != nil {
		return 0, fmt.Errorf("github: drift issue: %w", err)
	}
	for _, is := range issues {
		if !is.IsPullRequest() {
			return is.GetNumber(), nil
		}
	}
	title := "labsync: the lab host drifted from git (" + labName + ")"
	body := "labsync reports here drift that no pull request explains: what runs on the lab host differs from the repository and labsync could not correct it. Each drift is one comment, edited when it is resolved."
	labels := []string{DriftLabel}
	is, _, err := c.gh.Issues.Create(ctx, c.owner, c.repo, &github.IssueRequest{Title: &title, Body: &body, Labels: &labels})
	if err != nil {
		return 0, fmt.Errorf("github: open drift issue: %w", err)
	}
	return is.GetNumber(), nil
}
