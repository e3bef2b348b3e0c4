package server

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// POST /api/v1/sync is refused without the API token, and with no token
// configured at all.
func TestSyncNeedsTheAPIToken(t *testing.T) {
	s, triggers := newTestServer(Options{})
	w := do(s, http.MethodPost, "/api/v1/sync", "", nil)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "--api-token-file") || len(*triggers) != 0 {
		t.Errorf("sync with no token configured: %d %s, triggers %v", w.Code, w.Body, *triggers)
	}

	s, triggers = newTestServer(Options{APIToken: []byte("api-t0k")})
	for name, auth := range map[string]string{
		"no header":        "",
		"wrong token":      "Bearer wrong",
		"prefix of token":  "Bearer api-t0",
		"not bearer":       "Basic YXBpLXQwaw==",
		"token, no scheme": "api-t0k",
	} {
		hdr := map[string]string{}
		if auth != "" {
			hdr["Authorization"] = auth
		}
		if w := do(s, http.MethodPost, "/api/v1/sync", "", hdr); w.Code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s", name, w.Code, w.Body)
		}
	}
	if len(*triggers) != 0 {
		t.Errorf("refused requests triggered %v", *triggers)
	}
	if w := do(s, http.MethodPost, "/api/v1/sync", "", map[string]string{"Authorization": "Bearer api-t0k"}); w.Code != http.StatusAccepted || len(*triggers) != 1 {
		t.Errorf("right token: %d %s, triggers %v", w.Code, w.Body, *triggers)
	}
	metrics := do(s, http.MethodGet, "/metrics", "", nil).Body.String()
	for _, want := range []string{`labsync_api_requests_total{endpoint="sync",result="bad-token"} 5`, `labsync_api_requests_total{endpoint="sync",result="accepted"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// A browser can post a form anywhere without a preflight; the mutating
// endpoints take no form content types and no other method.
func TestSyncRefusesFormsAndOtherMethods(t *testing.T) {
	s, triggers := newTestServer(Options{APIToken: []byte("k")})
	auth := "Bearer k"
	for _, ct := range []string{"application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "text/plain; charset=utf-8", "Text/Plain", "application/xml", "bogus;;"} {
		if w := do(s, http.MethodPost, "/api/v1/sync", "a=b", map[string]string{"Authorization": auth, "Content-Type": ct}); w.Code != http.StatusUnsupportedMediaType {
			t.Errorf("content type %q: %d %s", ct, w.Code, w.Body)
		}
	}
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if w := do(s, m, "/api/v1/sync", "", map[string]string{"Authorization": auth}); w.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d", m, w.Code)
		}
	}
	if len(*triggers) != 0 {
		t.Fatalf("refused requests triggered %v", *triggers)
	}
	for _, ct := range []string{"", "application/json", "application/json; charset=utf-8"} {
		if w := do(s, http.MethodPost, "/api/v1/sync", "{}", map[string]string{"Authorization": auth, "Content-Type": ct}); w.Code != http.StatusAccepted {
			t.Errorf("content type %q: %d %s", ct, w.Code, w.Body)
		}
	}
}

// --insecure-webhooks opens /hooks/generic only when GitHub has no secret:
// with a secret it means the operator secured GitHub, not the generic hook.
func TestGenericWebhookEndpointWhenOpen(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		open bool
	}{
		{"nothing set", Options{}, false},
		{"generic token", Options{WebhookToken: []byte("t")}, true},
		{"insecure alone", Options{Insecure: true}, true},
		{"github secret and insecure", Options{WebhookSecret: []byte("s"), Insecure: true}, false},
		{"github secret, generic token and insecure", Options{WebhookSecret: []byte("s"), WebhookToken: []byte("t"), Insecure: true}, true},
		{"github secret only", Options{WebhookSecret: []byte("s")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, triggers := newTestServer(tc.opts)
			w := do(s, http.MethodPost, "/hooks/generic", "", nil)
			if open := w.Code != http.StatusNotFound; open != tc.open {
				t.Errorf("/hooks/generic answered %d, want open=%v", w.Code, tc.open)
			}
			if len(tc.opts.WebhookToken) > 0 && len(*triggers) != 0 {
				t.Errorf("tokenless request triggered %v", *triggers)
			}
		})
	}
}

// The start log says which endpoints that trigger work are open, and warns
// when one is open to anyone or the API is closed.
func TestStartLogNamesOpenEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"secured", Options{WebhookSecret: []byte("s"), WebhookToken: []byte("t"), APIToken: []byte("a")},
			`level=INFO msg="http endpoints that trigger work" /hooks/github=signature /hooks/generic="bearer token" /api/v1/sync="bearer token"`},
		{"insecure with a github secret", Options{WebhookSecret: []byte("s"), Insecure: true},
			`level=WARN msg="http endpoints that trigger work" /hooks/github=signature /hooks/generic=off /api/v1/sync=off`},
		{"insecure", Options{Insecure: true, APIToken: []byte("a")},
			`level=WARN msg="http endpoints that trigger work" /hooks/github=unauthenticated /hooks/generic=unauthenticated /api/v1/sync="bearer token"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf strings.Builder
			tc.opts.Logger = slog.New(slog.NewTextHandler(&buf, nil))
			newTestServer(tc.opts)
			if !strings.Contains(buf.String(), tc.want) {
				t.Errorf("log:\n%s\nwant %s", buf.String(), tc.want)
			}
		})
	}
}
