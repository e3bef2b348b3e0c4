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

// maxDeliveryID bounds what is kept of one delivery ID. GitHub's are UUIDs;
// a longer ID (a header may hold a megabyte) is kept as its SHA-256.
const maxDeliveryID = 128

// deliveries remembers the IDs of the last max deliveries to drop replays;
// it holds at most max keys of at most maxDeliveryID bytes.
type deliveries struct {
	mu    sync.Mutex
	order []string
	seen  map[string]bool
	max   int
}

func deliveryKey(id string) string {
	if len(id) <= maxDeliveryID {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// add records id and reports whether it is new.
func (d *deliveries) add(id string) bool {
	key := deliveryKey(id)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	if d.seen[key] {
		return false
	}
	d.seen[key] = true
	d.order = append(d.order, key)
	if len(d.order) > d.max {
		delete(d.seen, d.order[0])
		d.order = d.order[1:]
	}
	return true
}

// clip shortens a sender's string (a header) for replies and logs.
func clip(s string) string {
	const n = 80
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
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
	delivery := r.Header.Get("X-GitHub-Delivery")
	if len(s.opts.WebhookSecret) > 0 {
		if !VerifySignature(s.opts.WebhookSecret, body, r.Header.Get("X-Hub-Signature-256")) {
			s.webhook("bad-signature")
			s.log.Warn("webhook rejected: bad signature", "remote", r.RemoteAddr, "delivery", clip(delivery))
			writeJSON(w, http.StatusUnauthorized, hookReply{Status: "rejected", Detail: "signature does not match"})
			return
		}
	}
	if delivery != "" && !s.seen.add(delivery) {
		s.webhook("duplicate")
		writeJSON(w, http.StatusOK, hookReply{Status: "ignored", Detail: "delivery " + clip(delivery) + " was already received"})
		return
	}
	// The signature above covers the raw body, whichever encoding.
	hook, err := ParseGitHubHook(r.Header.Get("X-GitHub-Event"), r.Header.Get("Content-Type"), body)
	if err != nil {
		s.webhook("bad-payload")
		writeJSON(w, http.StatusBadRequest, hookReply{Status: "rejected", Detail: err.Error()})
		return
	}
	log := s.log.With("event", clip(hook.Event), "delivery", clip(delivery))
	switch hook.Event {
	case "ping":
		s.webhook("ping")
		writeJSON(w, http.StatusOK, hookReply{Status: "ok", Detail: "pong"})
	case "push":
		if hook.Ref != "refs/heads/"+s.opts.Branch {
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: clip(hook.Ref) + " is not the tracked branch " + s.opts.Branch})
			return
		}
		log.Info("webhook: push to the tracked branch", "after", hook.After)
		s.webhook("triggered")
		s.opts.Trigger("webhook: push " + shortSHA(hook.After))
		writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted", Detail: "a pass will fetch " + hook.Ref})
	case "pull_request":
		switch {
		case s.opts.PullRequest == nil:
			log.Info("webhook: pull request acknowledged; pull-request plans are off (no GitHub token)", "action", clip(hook.Action), "number", hook.Number)
			s.webhook("acknowledged")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "acknowledged", Detail: fmt.Sprintf("pull request #%d %s; plans are off", hook.Number, clip(hook.Action))})
		case hook.Base != "" && hook.Base != s.opts.Branch:
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "pull request into " + clip(hook.Base) + ", not the tracked branch " + s.opts.Branch})
		case hook.Action == "opened" || hook.Action == "synchronize" || hook.Action == "reopened":
			log.Info("webhook: pull request to plan", "action", hook.Action, "number", hook.Number, "head", hook.Head, "fork", hook.Fork)
			s.webhook("pull-request")
			s.opts.PullRequest(hook.Number, hook.Head, hook.Fork)
			writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted", Detail: fmt.Sprintf("pull request #%d will be planned", hook.Number)})
		default:
			s.webhook("ignored")
			writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "pull request action " + clip(hook.Action) + " needs no plan"})
		}
	default:
		s.webhook("ignored")
		writeJSON(w, http.StatusAccepted, hookReply{Status: "ignored", Detail: "event " + clip(hook.Event) + " is not used"})
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
	if len(s.opts.WebhookToken) > 0 && !bearerOK(r, s.opts.WebhookToken) {
		s.webhook("bad-token")
		s.log.Warn("webhook rejected: bad token", "remote", r.RemoteAddr)
		writeJSON(w, http.StatusUnauthorized, hookReply{Status: "rejected", Detail: "missing or wrong bearer token"})
		return
	}
	s.webhook("triggered")
	s.opts.Trigger("webhook: generic")
	writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted"})
}

// bearerOK reports whether r carries "Authorization: Bearer <want>". The
// tokens are compared as SHA-256 sums in constant time, so neither their
// content nor their length shows in the timing.
func bearerOK(r *http.Request, want []byte) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got, exp := sha256.Sum256([]byte(token)), sha256.Sum256(want)
	return subtle.ConstantTimeCompare(got[:], exp[:]) == 1
}
