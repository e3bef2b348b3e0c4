package main

import (
	goruntime "runtime"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		out, _, err := runCmd(t, arg)
		if err != nil || !strings.HasPrefix(out, "labsync ") || !strings.Contains(out, goruntime.Version()) {
			t.Errorf("labsync %s = %q, %v", arg, out, err)
		}
	}
}
