// Package redact hides values that look like secrets in text that leaves
// labsync: container log tails in errors, build output, agent output, PR
// comments, MQTT payloads.
package redact

import (
	"regexp"
	"sort"
	"strings"
)

var patterns = []struct {
	re   *regexp.Regexp
	with string
}{
	// Authorization: Bearer x, Authorization: token x (GitHub), whatever
	// the scheme: the credential goes, not the scheme's name.
	{regexp.MustCompile(`(?i)(authorization["']?\s*[:=]\s*["']?)(?:[a-z]+\s+)?[^\s"',;]+`), `$1***`},
	// KEY=value, KEY: value, "key": "value", 'key': 'value' (Python
	// reprs) where the key names a secret.
	{regexp.MustCompile(`(?i)(["']?[A-Z0-9_.-]*(?:password|passwd|passphrase|pwd|secret|token|key|credential|auth)[A-Z0-9_.-]*["']?)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;|}]+)`), `$1$2***`},
	// Environment variables named *_PASS (MQTT_PASS=...); upper case only,
	// so "tests passed=3" stays.
	{regexp.MustCompile(`\b([A-Z][A-Z0-9_]*_PASS)(=)(\S+)`), `$1$2***`},
	// --password value, --token=value
	{regexp.MustCompile(`(?i)(--?[a-z0-9-]*(?:password|passwd|secret|token|key)[a-z0-9-]*)(\s+|=)(\S+)`), `$1$2***`},
	// Authorization: Bearer x, Basic x
	{regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`), `$1 ***`},
	// user:password@ in URLs
	{regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@`), `$1***@`},
	// A user alone in an http(s) URL is often a token
	// (https://<token>@github.com/...). ssh users are left alone.
	{regexp.MustCompile(`(?i)\b(https?://)[^/\s:@]+@`), `$1***@`},
	// GitHub, GitLab and Slack token shapes
	{regexp.MustCompile(`\b(ghp|gho|ghu|ghs|ghr|github_pat|glpat|xox[abpr])[_-][A-Za-z0-9_-]{10,}`), `***`},
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

// MinValueLen is the length below which a known value is not hidden: a
// shorter one would hide ordinary words and numbers wherever they appear.
const MinValueLen = 4

// Redactor hides known secret values wherever they appear, then the shapes
// String finds. A nil Redactor hides the shapes only.
type Redactor struct {
	values *strings.Replacer
}

// New returns a Redactor for values; those shorter than MinValueLen are
// ignored.
func New(values ...string) *Redactor {
	seen := map[string]bool{}
	var keep []string
	for _, v := range values {
		if len(v) >= MinValueLen && !seen[v] {
			seen[v] = true
			keep = append(keep, v)
		}
	}
	if len(keep) == 0 {
		return &Redactor{}
	}
	// The replacer tries its pairs in order at each position: the longest
	// value first, so one that contains another is hidden whole.
	sort.Slice(keep, func(i, j int) bool { return len(keep[i]) > len(keep[j]) })
	pairs := make([]string, 0, 2*len(keep))
	for _, v := range keep {
		pairs = append(pairs, v, "***")
	}
	return &Redactor{values: strings.NewReplacer(pairs...)}
}

// String returns s with the known values and secret-looking values
// replaced by ***.
func (r *Redactor) String(s string) string {
	if r != nil && r.values != nil {
		s = r.values.Replace(s)
	}
	return String(s)
}
