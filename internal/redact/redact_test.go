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
	} {
		got := String(tc.in)
		if strings.Contains(got, tc.secret) {
			t.Errorf("String(%q) = %q still shows %q", tc.in, got, tc.secret)
		}
	}
	for _, keep := range []string{"exited with code 1", "device unreachable", "Starting job 0b3a5c3e-1c1c-4c1c-9c1c-1c1c1c1c1c1c"} {
		if got := String(keep); got != keep {
			t.Errorf("String(%q) = %q, want it unchanged", keep, got)
		}
	}
}
