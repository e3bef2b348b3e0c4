package reconciler

import (
	"sort"
	"strings"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Health values of an agent or service, as published.
const (
	HealthHealthy       = "healthy"
	HealthStarting      = "starting"
	HealthUnhealthy     = "unhealthy"
	HealthStopped       = "stopped"
	HealthDeviceOffline = "device-offline"
	HealthMissing       = "missing"
)

// ObjectStatus is one agent or service as the status page, the API and
// MQTT show it.
type ObjectStatus struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Container string `json:"container"`
	// State is Docker's (running, exited, ...) or missing.
	State  string `json:"state"`
	Status string `json:"status,omitempty"`
	// Health combines the container's state, Docker's health status and
	// the agent's own heartbeat: healthy, starting, unhealthy, stopped,
	// device-offline or missing. DockerHealth is Docker's alone.
	Health       string `json:"health"`
	DockerHealth string `json:"docker_health,omitempty"`
	// Drift is what a pass would still do about the object, if anything:
	// create, recreate, start, remove; or held, when errors in its files
	// (Reason, with file:line) keep labsync from touching it.
	Drift     string `json:"drift,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Revision  string `json:"revision,omitempty"`
	LastError string `json:"last_error,omitempty"`
	Image     string `json:"image,omitempty"`
}

// ObjectHealth derives an object's health from its container and whether
// its device is marked offline.
func ObjectHealth(c *runtime.ObservedContainer, deviceOffline bool) string {
	switch {
	case c == nil:
		return HealthMissing
	case c.State != "running":
		return HealthStopped
	case deviceOffline:
		return HealthDeviceOffline
	case c.Health == "unhealthy":
		return HealthUnhealthy
	case c.Health == "starting":
		return HealthStarting
	}
	return HealthHealthy
}

// Objects returns every declared or running agent and service, services
// first, each sorted by name.
func (s LabStatus) Objects() []ObjectStatus {
	byKey := map[string]*ObjectStatus{}
	var order []string
	get := func(kind, name string) *ObjectStatus {
		k := kind + "/" + name
		if o := byKey[k]; o != nil {
			return o
		}
		o := &ObjectStatus{Name: name, Kind: kind, State: HealthMissing, Health: HealthMissing}
		byKey[k] = o
		order = append(order, k)
		return o
	}
	if s.Desired != nil {
		for _, c := range s.Desired.Containers {
			o := get(string(c.Kind), c.Name)
			o.Container, o.Image = c.ContainerName, c.Image
		}
	}
	if s.Observed != nil {
		for i := range s.Observed.Containers {
			c := &s.Observed.Containers[i]
			if c.Aside {
				continue
			}
			o := get(string(c.Kind), c.Object)
			o.Container, o.State, o.Status, o.DockerHealth, o.Revision, o.Image = c.Name, c.State, c.Status, c.Health, c.Revision, c.Image
			o.Health = ObjectHealth(c, s.Offline[c.Object] && c.Kind == lab.KindAgent)
		}
	}
	if s.Plan != nil {
		for _, bl := range s.Plan.Blocked {
			if bl.Kind == string(lab.KindAgent) || bl.Kind == string(lab.KindService) {
				o := get(bl.Kind, bl.Object)
				o.Drift, o.Reason = DriftBlocked, bl.Reason
			}
		}
		for _, h := range s.Plan.Held {
			o := get(string(lab.KindAgent), h.Name)
			if h.Container != "" && o.Container == "" {
				o.Container = h.Container
			}
			o.Drift, o.Reason = DriftHeld, strings.Join(h.Reasons, "; ")
		}
		for _, a := range s.Plan.Actions {
			if a.ObjectKind != string(lab.KindAgent) && a.ObjectKind != string(lab.KindService) {
				continue
			}
			o := get(a.ObjectKind, a.Object)
			o.Drift = string(a.Kind)
			o.Reason = strings.Join(a.Reasons, "; ")
		}
	}
	for k, e := range s.LastErrors {
		if o := byKey[k]; o != nil {
			o.LastError = e
		}
	}
	out := make([]ObjectStatus, 0, len(order))
	for _, k := range order {
		out = append(out, *byKey[k])
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind == string(lab.KindService)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Event is something that happened, for the events stream.
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Object  string    `json:"object,omitempty"`
	Message string    `json:"message"`
	Error   bool      `json:"error,omitempty"`
}

// Summary is the lab at a glance: /api/v1/status and <prefix>/status.
type Summary struct {
	Lab         string    `json:"lab"`
	Revision    string    `json:"revision"`
	LastGood    string    `json:"last_good_revision,omitempty"`
	Invalid     string    `json:"invalid_revision,omitempty"`
	Ready       bool      `json:"ready"`
	Passing     bool      `json:"passing"`
	LastResult  string    `json:"last_result,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastRun     time.Time `json:"last_run,omitempty"`
	LastSuccess time.Time `json:"last_success,omitempty"`
	Agents      int       `json:"agents"`
	Services    int       `json:"services"`
	Drifted     int       `json:"drifted"`
	Unhealthy   int       `json:"unhealthy"`
	// Held counts the agents held by errors in their files.
	Held int `json:"held"`
}

// DriftHeld is the drift of an agent held by errors in its files;
// DriftBlocked of an object something labsync did not make is in the way
// of (taken over with --adopt).
const (
	DriftHeld    = "held"
	DriftBlocked = "blocked"
)

// Summary counts the lab's objects and says how the last pass went.
func (s LabStatus) Summary() Summary {
	v := Summary{Lab: s.Lab, Revision: s.Revision, LastGood: s.LastGood, Invalid: s.Invalid, Ready: s.Ready, Passing: s.Passing, LastSuccess: s.LastOK}
	if r := s.LastRun; r != nil {
		v.LastResult, v.LastError, v.LastRun = r.Result, r.Error, r.Started
	}
	for _, o := range s.Objects() {
		if o.Kind == string(lab.KindAgent) {
			v.Agents++
		} else {
			v.Services++
		}
		switch o.Drift {
		case "":
		case DriftHeld:
			v.Held++
		default:
			v.Drifted++
		}
		if o.Health != HealthHealthy && o.Health != HealthStarting {
			v.Unhealthy++
		}
	}
	return v
}
