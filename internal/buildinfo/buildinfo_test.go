package buildinfo

import (
	goruntime "runtime"
	"runtime/debug"
	"testing"
)

func TestVersionLine(t *testing.T) {
	platform := goruntime.Version() + ", " + goruntime.GOOS + "/" + goruntime.GOARCH
	vcs := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.modified", Value: "false"},
	}}
	for _, tc := range []struct {
		name, version, commit string
		bi                    *debug.BuildInfo
		want                  string
	}{
		{"stamped by make build", "v0.3.0", "abc1234def", vcs, "labsync-agent v0.3.0 (commit abc1234def, " + platform + ")"},
		{"go build in a clean checkout", "dev", "", vcs, "labsync-agent dev (commit 0123456789abcdef0123456789abcdef01234567, " + platform + ")"},
		{"go test", "dev", "", &debug.BuildInfo{}, "labsync-agent dev (" + platform + ")"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Line("labsync-agent", tc.version, tc.commit, tc.bi); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
