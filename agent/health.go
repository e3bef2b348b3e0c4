package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// States of the agent in the heartbeat and on MQTT.
const (
	StateStarting   = "starting"
	StateIdle       = "idle"
	StateBusy       = "busy"
	StateRestarting = "restarting"
	StateStopping   = "stopping"
)

// Heartbeat is the supervisor's view of the agent, written to a file every
// status interval. The healthcheck and the labsync daemon read it.
type Heartbeat struct {
	Time     time.Time `json:"time"`
	SUT      string    `json:"sut"`
	ChildPID int       `json:"child_pid"`
	Running  bool      `json:"running"`
	// State is starting, idle, busy, restarting or stopping.
	State string    `json:"state"`
	JobID string    `json:"job_id,omitempty"`
	Since time.Time `json:"since"`
	// Restarts counts restarts after crashes; RecentCrashes those within
	// the crash window.
	Restarts      int    `json:"restarts"`
	RecentCrashes int    `json:"recent_crashes"`
	CrashLoop     bool   `json:"crash_loop"`
	Offline       bool   `json:"offline"`
	LastExit      string `json:"last_exit,omitempty"`
	// Interval is how often the file is rewritten.
	Interval time.Duration `json:"interval_ns"`
}

// WriteHeartbeat writes hb to path atomically.
func WriteHeartbeat(path string, hb Heartbeat) error {
	data, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadHeartbeat reads the heartbeat file at path.
func ReadHeartbeat(path string) (Heartbeat, error) {
	var hb Heartbeat
	data, err := os.ReadFile(path)
	if err != nil {
		return hb, err
	}
	err = json.Unmarshal(data, &hb)
	return hb, err
}

// HeartbeatFile is the heartbeat's name inside the state folder.
const HeartbeatFile = "heartbeat.json"

// DefaultStateDir is where the supervisor keeps its heartbeat.
const DefaultStateDir = "/run/labsync-agent"

// Decide is the health decision: healthy, or the reason the agent is not.
// maxAge bounds how old the heartbeat may be; alive says whether a process
// exists.
func Decide(hb Heartbeat, readErr error, now time.Time, maxAge time.Duration, alive func(pid int) bool) (bool, string) {
	switch {
	case errors.Is(readErr, os.ErrNotExist):
		return false, "no heartbeat file: the labsync-agent supervisor is not running"
	case readErr != nil:
		return false, "heartbeat unreadable: " + readErr.Error()
	case now.Sub(hb.Time) > maxAge:
		return false, fmt.Sprintf("heartbeat stale: last written %s ago (limit %s); the supervisor is stuck or gone", now.Sub(hb.Time).Round(time.Second), maxAge)
	case hb.CrashLoop:
		return false, fmt.Sprintf("agent is crash-looping: %d crashes recently, last %s", hb.RecentCrashes, hb.LastExit)
	case hb.Offline:
		return false, "device is marked offline (TESTFLINGER-DEVICE-OFFLINE marker); remove the marker once it is repaired"
	case hb.State == StateRestarting:
		return true, fmt.Sprintf("ok: agent restarting after %s (restart %d)", hb.LastExit, hb.Restarts)
	case !hb.Running || hb.ChildPID <= 0 || !alive(hb.ChildPID):
		return false, fmt.Sprintf("agent process %d is not running", hb.ChildPID)
	}
	msg := "ok: agent " + hb.State
	if hb.JobID != "" {
		msg += " with job " + hb.JobID
	}
	return true, msg
}

// ProcessAlive reports whether a process with pid exists.
func ProcessAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Healthcheck runs the decision on the heartbeat in stateDir.
func Healthcheck(stateDir string, maxAge time.Duration) (bool, string) {
	hb, err := ReadHeartbeat(filepath.Join(stateDir, HeartbeatFile))
	if err == nil && maxAge == 0 {
		maxAge = 3 * hb.Interval
		if maxAge < 3*time.Second {
			maxAge = 3 * time.Second
		}
	}
	return Decide(hb, err, time.Now(), maxAge, ProcessAlive)
}
