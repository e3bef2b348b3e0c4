// Package buildinfo says which build of labsync or labsync-agent runs:
// the version and commit stamped by make build, or what the Go toolchain
// recorded.
package buildinfo

import (
	"fmt"
	goruntime "runtime"
	"runtime/debug"
	"strings"
)

// Line says which build of a command this is, e.g.
// "labsync v0.3.0-12-gabc1234 (commit abc1234..., go1.26.8, linux/amd64)".
// version and commit come from -ldflags; without them (go build, go
// install, go test) they come from the build info when it has them: the
// module version, and the VCS revision that go build stamps in a checkout.
func Line(name, version, commit string, bi *debug.BuildInfo) string {
	var modified bool
	if bi != nil {
		if version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
		if commit == "" {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
		}
	}
	var parts []string
	if commit != "" {
		parts = append(parts, "commit "+commit)
		if modified {
			parts = append(parts, "modified")
		}
	}
	parts = append(parts, goruntime.Version(), goruntime.GOOS+"/"+goruntime.GOARCH)
	return fmt.Sprintf("%s %s (%s)", name, version, strings.Join(parts, ", "))
}
