package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		var out bytes.Buffer
		if code := run(context.Background(), []string{arg}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "labsync-agent ") {
			t.Errorf("labsync-agent %s: exit %d, %q", arg, code, out.String())
		}
	}
}
