package redact

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, secret string }{
		{"MAAS_API_KEY=s3cr3t-value boom", "s3cr3t-value"},
		{`{"password": "hunter2"}`, "hunter2"},
		{"SSH_KEY=abcdef123", "abcdef123"},
		{"AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP"},
		{"Authorization: Bearer ghp_abcdefghijklmnop1234", "ghp_abcdefghijklmnop1234"},
		{"run --password x9y8z7 now", "x9y8z7"},
		{"clone https://user:s3cret@git.example/lab.git", "s3cret"},
		{"token=abc | device unreachable", "abc"},
		{"found github_pat_11ABCDEFG0123456789_abcdefghijkl in env", "github_pat_11ABCDEFG0123456789_abcdefghijkl"},
		// Environment dumps (env, docker inspect, set -x).
		{"LABSYNC_AGENT_MQTT_PASSWORD=hunter22", "hunter22"},
		{"MQTT_PASS=hunter22", "hunter22"},
		{"export DB_PASSPHRASE=correct-horse", "correct-horse"},
		// Python reprs: testflinger-agent logs job data as dicts.
		{"provision_data: {'url': 'http://maas', 'password': 'ubuntu123'}", "ubuntu123"},
		// "Authorization: token X" (GitHub) must hide X, not the word token.
		{"Authorization: token abcdefgh12345", "abcdefgh12345"},
		{`"Authorization": "token abcdefgh12345"`, "abcdefgh12345"},
		// A token alone in an http(s) URL's user part.
		{"fetch https://tok3nvalue@github.com/o/r.git failed", "tok3nvalue"},
		{`Get "http://x-access-token:p%40ss@127.0.0.1:9/r.git/info/refs": dial tcp`, "p%40ss"},
		// GitLab and Slack tokens use hyphens.
		{"glpat-abcdefghijklmnopqrst", "abcdefghijklmnopqrst"},
		{"xoxb-123456789012-abcdefghijkl", "abcdefghijkl"},
		// Docker build output: a step line and its error.
		{"Step 2/2 : COPY db_password=hunter2 /x/", "hunter2"},
		{"stat db_password=hunter2: file does not exist", "hunter2"},
	} {
		got := String(tc.in)
		if strings.Contains(got, tc.secret) {
			t.Errorf("String(%q) = %q still shows %q", tc.in, got, tc.secret)
		}
		if !strings.Contains(got, "***") {
			t.Errorf("String(%q) = %q has no ***", tc.in, got)
		}
	}
	for _, keep := range []string{
		"exited with code 1", "device unreachable", "Starting job 0b3a5c3e-1c1c-4c1c-9c1c-1c1c1c1c1c1c",
		"tests passed=3 failed=0", "ssh://git@github.com/org/lab.git", "git@github.com:org/lab.git",
		"https://github.com/org/lab.git", "INFO: Sleeping for 10",
	} {
		if got := String(keep); got != keep {
			t.Errorf("String(%q) = %q, want it unchanged", keep, got)
		}
	}
}

func TestRedactorHidesKnownValues(t *testing.T) {
	r := New("s3cr3t-maas-key", "abc", "", "s3cr3t-maas-key-longer")
	for _, tc := range []struct{ in, want string }{
		// Exact values go whatever surrounds them; the longer value first.
		{"connecting with s3cr3t-maas-key-longer now", "connecting with *** now"},
		{"key is s3cr3t-maas-key.", "key is ***."},
		// Values shorter than 4 characters would hide ordinary words.
		{"abc def", "abc def"},
		// The shapes of String still apply.
		{"token=zzzzzz", "token=***"},
		// A value that a shape would cut in two is hidden whole.
		{"MAAS_KEY=s3cr3t-maas-key trailing", "MAAS_KEY=*** trailing"},
	} {
		if got := r.String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	var none *Redactor
	if got := none.String("token=zzzzzz"); got != "token=***" {
		t.Errorf("nil Redactor: %q", got)
	}
}
