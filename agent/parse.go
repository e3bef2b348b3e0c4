// Package agent is what labsync-agent runs inside an agent container: it
// supervises testflinger-agent (restarts with backoff, signal forwarding, a
// bounded stop), fans its output out to stdout, a rotating log file and
// MQTT, tracks jobs from its log lines, and keeps a heartbeat file that the
// container healthcheck reads without any network.
package agent

import (
	"regexp"
	"strings"
)

// LineKind is what a log line of testflinger-agent says about its state.
type LineKind int

// Kinds of lines.
const (
	LineOther LineKind = iota
	// LineJobStart is "Starting job <uuid>".
	LineJobStart
	// LineIdle is "Checking jobs" or "Sleeping for <n>": the agent polls.
	LineIdle
)

var jobStart = regexp.MustCompile(`Starting job ([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})`)

// ParseLine classifies one output line; for a job start it returns the
// job's id.
func ParseLine(line string) (LineKind, string) {
	if m := jobStart.FindStringSubmatch(line); m != nil {
		return LineJobStart, strings.ToLower(m[1])
	}
	if strings.Contains(line, "Checking jobs") || strings.Contains(line, "Sleeping for ") {
		return LineIdle, ""
	}
	return LineOther, ""
}
