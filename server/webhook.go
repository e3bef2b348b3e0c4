package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// MaxWebhookBody bounds a webhook request body (GitHub sends at most 25 MB,
// but lab repositories' pushes are far smaller).
const MaxWebhookBody = 5 << 20

// VerifySignature checks a GitHub X-Hub-Signature-256 header ("sha256=<hex>")
// against body with secret, in constant time.
func VerifySignature(secret, body []byte, header string) bool {
	sig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// Sign returns the X-Hub-Signature-256 value for body.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// deliveries remembers recent delivery IDs to drop replays.
type deliveries struct {
	mu    sync.Mutex
	order []string
	seen  map[string]bool
	max   int
}

// add records id and reports whether it is new.
func (d *deliveries) add(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	if d.seen[id] {
		return false
	}
	d.seen[id] = true
	d.order = append(d.order, id)
	if len(d.order) > d.max {
		delete(d.seen, d.order[0])
		d.order = d.order[1:]
	}
	return true
}

type hookReply struct {
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.webhook("too-large")
			writeJSON(w, http.StatusRequestEntityTooLarge, hookReply{Status: "rejected", Detail: fmt.Sprintf("body over %d bytes", MaxWebhookBody)})
			return nil, false
		}
		s.webhook("bad-request")
		writeJSON(w, http.StatusBadRequest, hookReply{Status: "rejected", Detail: "cannot read body"})
		return nil, false
	}
	return body, true
}

// handleGitHub serves POST /hooks/github. It answers fast: a push to the
// tracked branch only triggers a pass, which runs asynchronously.
func (s *Server) handleGitHub(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	if len(s.opts.WebhookSecret) > 0 {
		if !VerifySignature(s.opts.WebhookSecret, body, r.Header.Get("X-Hub-Signature-256")) {
			s.webhook("bad-signature")
			s.log.Warn("webhook rejected: bad signature", "remote", r.RemoteAddr, "delivery", r.Header.Get("X-GitHub-Delivery"))
			writeJSON(w, http.StatusUnauthorized, hookReply{Status: "rejected", Detail: "signature does not match"})
			return
		}
	}
	if id := r.Header.Get("X-GitHub-Delivery"); id != "" && !s.seen.add(id) {
		s.webhook("duplicate")
		writeJSON(w, http.StatusOK, hookReply{Status: "ignored", Detail: "delivery " + id + " was already received"})
		return
	}
	// GitHub's form content type sends the JSON in a "payload" field; the
	// signature above covers the raw body either way.
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		form, err := url.ParseQuery(string(body))
		if err != nil || form.Get("payload") == "" {
			s.webhook("bad-payload")
			writeJSON(w, http.StatusBadRequest, hookReply{Status: "rejected", Detail: "form body without a payload field"})
			return
		}
		body = []byte(form.Get("payload"))
	}
	event := r.Header.Get("X-GitHub-Event")
	log := s.log.With("event", event, "delivery", r.Header.Get("X-GitHub-Delivery"))
	switch event {
	case "ping":
		s.webhook("ping")
		writeJSON(w, http.StatusOK, hookReply{Status: "ok", Detail: "pong"})
	case "push":
		var p struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Ref == "" {
			s.webhook("bad-payload")
			writeJSON(w, http.StatusBadRequest, hookReply{Status: "rejected", Detail: "not a push payload"})
			return
		}
		if p.Ref != "refs/heads/"+s.opts.Branch {
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: p.Ref + " is not the tracked branch " + s.opts.Branch})
			return
		}
		log.Info("webhook: push to the tracked branch", "after", p.After)
		s.webhook("triggered")
		s.opts.Trigger("webhook: push " + shortSHA(p.After))
		writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted", Detail: "a pass will fetch " + p.Ref})
	case "pull_request":
		var p struct {
			Action      string `json:"action"`
			Number      int    `json:"number"`
			PullRequest struct {
				Head struct {
					SHA  string `json:"sha"`
					Repo struct {
						FullName string `json:"full_name"`
					} `json:"repo"`
				} `json:"head"`
				Base struct {
					Ref  string `json:"ref"`
					Repo struct {
						FullName string `json:"full_name"`
					} `json:"repo"`
				} `json:"base"`
			} `json:"pull_request"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Number <= 0 {
			s.webhook("bad-payload")
			writeJSON(w, http.StatusBadRequest, hookReply{Status: "rejected", Detail: "not a pull_request payload"})
			return
		}
		switch {
		case s.opts.PullRequest == nil:
			log.Info("webhook: pull request acknowledged; pull-request plans are off (no GitHub token)", "action", p.Action, "number", p.Number)
			s.webhook("acknowledged")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "acknowledged", Detail: fmt.Sprintf("pull request #%d %s; plans are off", p.Number, p.Action)})
		case p.PullRequest.Base.Ref != "" && p.PullRequest.Base.Ref != s.opts.Branch:
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "pull request into " + p.PullRequest.Base.Ref + ", not the tracked branch " + s.opts.Branch})
		case p.Action == "opened" || p.Action == "synchronize" || p.Action == "reopened":
			head := p.PullRequest.Head
			fork := head.Repo.FullName != p.PullRequest.Base.Repo.FullName
			log.Info("webhook: pull request to plan", "action", p.Action, "number", p.Number, "head", head.SHA, "fork", fork)
			s.webhook("pull-request")
			s.opts.PullRequest(p.Number, head.SHA, fork)
			writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted", Detail: fmt.Sprintf("pull request #%d will be planned", p.Number)})
		default:
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "pull request action " + p.Action + " needs no plan"})
		}
	default:
		s.webhook("ignored")
		writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "event " + event + " is not used"})
	}
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// handleGeneric serves POST /hooks/generic for Gitea, GitLab and others:
// any request with the bearer token triggers a pass.
func (s *Server) handleGeneric(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.readBody(w, r); !ok {
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if len(s.opts.WebhookToken) > 0 && (!ok || subtle.ConstantTimeCompare([]byte(token), s.opts.WebhookToken) != 1) {
		s.webhook("bad-token")
		writeJSON(w, http.StatusUnauthorized, hookReply{Status: "rejected", Detail: "missing or wrong bearer token"})
		return
	}
	s.webhook("triggered")
	s.opts.Trigger("webhook: generic")
	writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted"})
}
