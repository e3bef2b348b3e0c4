package server

import (
	"encoding/json"
	"errors"
	"mime"
	"net/url"
	"strings"
)

// Hook is what labsync takes from a GitHub webhook delivery. It is only a
// hint: passes and plans fetch and decide the revision themselves.
type Hook struct {
	// Event is the X-GitHub-Event header.
	Event string
	// Ref and After are a push's ref (refs/heads/main) and its new head
	// (all zeros when the ref was deleted).
	Ref   string
	After string
	// Action, Number, Head, Fork and Base describe a pull_request event:
	// its action (opened, synchronize, ...), number, head commit, whether
	// the head lives in another repository than the base, and the base
	// branch.
	Action string
	Number int
	Head   string
	Fork   bool
	Base   string
}

// ParseGitHubHook parses the body of a GitHub webhook delivery of event,
// sent as contentType: application/json, or the form encoding with the JSON
// in a payload field. Authenticate the body before. A push needs a ref and
// a pull request a positive number; a commit ID that is not hex is dropped
// (it is only a hint); other events carry only their name.
func ParseGitHubHook(event, contentType string, body []byte) (Hook, error) {
	if mediaType(contentType) == "application/x-www-form-urlencoded" {
		form, err := url.ParseQuery(string(body))
		if err != nil || form.Get("payload") == "" {
			return Hook{}, errors.New("form body without a payload field")
		}
		body = []byte(form.Get("payload"))
	}
	h := Hook{Event: event}
	switch event {
	case "push":
		var p struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Ref == "" {
			return Hook{}, errors.New("not a push payload")
		}
		h.Ref, h.After = p.Ref, commitOrEmpty(p.After)
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
			return Hook{}, errors.New("not a pull_request payload")
		}
		head, base := p.PullRequest.Head, p.PullRequest.Base
		h.Action, h.Number, h.Head, h.Base = p.Action, p.Number, commitOrEmpty(head.SHA), base.Ref
		// A head without a repository (a deleted fork) counts as a fork.
		h.Fork = head.Repo.FullName == "" || head.Repo.FullName != base.Repo.FullName
	}
	return h, nil
}

func commitOrEmpty(s string) string {
	if commitID(s) {
		return s
	}
	return ""
}

// commitID reports whether s is a SHA-1 or SHA-256 commit ID in hex.
func commitID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// mediaType returns the lower-case media type of a Content-Type header,
// without parameters; "" when there is none.
func mediaType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt, _, _ = strings.Cut(contentType, ";")
		mt = strings.ToLower(strings.TrimSpace(mt))
	}
	return mt
}
