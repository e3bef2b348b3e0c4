// Package redact hides values that look like secrets in text that leaves
// labsync: container log tails in errors, PR comments, MQTT payloads.
package redact

import "regexp"

var patterns = []struct {
	re   *regexp.Regexp
	with string
}{
	// KEY=value, KEY: value, "key": "value" where the key names a secret.
	{regexp.MustCompile(`(?i)("?[A-Z0-9_.-]*(?:password|passwd|pwd|secret|token|key|credential|auth)[A-Z0-9_.-]*"?)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;|}]+)`), `$1$2***`},
	// --password value, --token=value
	{regexp.MustCompile(`(?i)(--?[a-z0-9-]*(?:password|passwd|secret|token|key)[a-z0-9-]*)(\s+|=)(\S+)`), `$1$2***`},
	// Authorization: Bearer x, Basic x
	{regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`), `$1 ***`},
	// user:password@ in URLs
	{regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@`), `$1***@`},
	// GitHub, GitLab and Slack token shapes
	{regexp.MustCompile(`\b(ghp|gho|ghu|ghs|ghr|github_pat|glpat|xox[abp])_[A-Za-z0-9_-]{10,}`), `***`},
	// AWS access key ids
	{regexp.MustCompile(`\bAKIA[0-9A-Z]{16}\b`), `***`},
}

// String returns s with secret-looking values replaced by ***.
func String(s string) string {
	for _, p := range patterns {
		s = p.re.ReplaceAllString(s, p.with)
	}
	return s
}
