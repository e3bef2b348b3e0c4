package server

import (
	"net/http"
)

// endpointAuth names how an endpoint authenticates: "off" (not served),
// how when it has a credential, "unauthenticated" when allowed without.
func endpointAuth(credential, allowWithout bool, how string) string {
	switch {
	case credential:
		return how
	case allowWithout:
		return "unauthenticated"
	}
	return "off"
}

// mutating guards an API endpoint that changes something. It refuses
// everything when no API token is configured, needs the token in
// Authorization: Bearer, and takes no body or JSON only: a browser posts
// forms and text/plain to any site without a preflight.
func (s *Server) mutating(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.opts.APIToken) == 0 {
			s.apiResult(endpoint, "no-token-configured")
			s.log.Warn("api request refused: no API token is configured", "endpoint", endpoint, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, hookReply{Status: "rejected", Detail: "this daemon takes no API requests: start labsync serve with --api-token-file (or LABSYNC_API_TOKEN)"})
			return
		}
		if !bearerOK(r, s.opts.APIToken) {
			s.apiResult(endpoint, "bad-token")
			s.log.Warn("api request rejected: bad token", "endpoint", endpoint, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="labsync"`)
			writeJSON(w, http.StatusUnauthorized, hookReply{Status: "rejected", Detail: "missing or wrong bearer token (--api-token-file)"})
			return
		}
		if mt := mediaType(r.Header.Get("Content-Type")); mt != "" && mt != "application/json" {
			s.apiResult(endpoint, "bad-content-type")
			s.log.Warn("api request rejected: content type", "endpoint", endpoint, "remote", r.RemoteAddr, "content_type", clip(mt))
			writeJSON(w, http.StatusUnsupportedMediaType, hookReply{Status: "rejected", Detail: "content type " + clip(mt) + " is not accepted: send no body, or application/json"})
			return
		}
		s.apiResult(endpoint, "accepted")
		h(w, r)
	}
}

func (s *Server) apiResult(endpoint, result string) {
	s.metrics.api.WithLabelValues(endpoint, result).Inc()
}
