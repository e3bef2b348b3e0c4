package reconciler

import (
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// LabStatus is what a controller knows now.
type LabStatus struct {
	Lab        string            `json:"lab"`
	Revision   string            `json:"revision"`
	LastGood   string            `json:"last_good_revision,omitempty"`
	Invalid    string            `json:"invalid_revision,omitempty"`
	Ready      bool              `json:"ready"`
	Passing    bool              `json:"passing"`
	LastRun    *Run              `json:"last_run,omitempty"`
	LastOK     time.Time         `json:"last_success,omitempty"`
	Desired    *lab.Desired      `json:"-"`
	Observed   *runtime.Observed `json:"-"`
	Plan       *Changeset        `json:"-"`
	LastErrors map[string]string `json:"-"`
	// Offline lists agents whose device is marked offline.
	Offline map[string]bool `json:"-"`
}

// SortedErrors returns the last error of each object, sorted by object.
func (s LabStatus) SortedErrors() [][2]string {
	keys := make([]string, 0, len(s.LastErrors))
	for k := range s.LastErrors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][2]string, len(keys))
	for i, k := range keys {
		out[i] = [2]string{k, s.LastErrors[k]}
	}
	return out
}

// statusStore keeps what a controller knows, its recent passes, and the
// sinks that are told of every change (MQTT, the status page, GitHub).
type statusStore struct {
	history int

	mu         sync.Mutex
	status     LabStatus
	runs       []Run // newest first
	nextID     int64
	stateSinks []func(LabStatus)
	eventSinks []func(Event)
	// observations numbers each reading of the host as it starts;
	// shownObservation is the one status.Observed holds, so that an
	// older reading that ends late never replaces a newer one.
	observations     uint64
	shownObservation uint64
}

func newStatusStore(labName string, history int) *statusStore {
	return &statusStore{history: history,
		status: LabStatus{Lab: labName, LastErrors: map[string]string{}, Offline: map[string]bool{}}}
}

// get returns a copy of the status.
func (s *statusStore) get() LabStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.LastErrors = maps.Clone(s.status.LastErrors)
	st.Offline = maps.Clone(s.status.Offline)
	return st
}

// update changes the status under the store's lock; f must not block.
func (s *statusStore) update(f func(*LabStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status)
}

// recent returns the recent passes, newest first.
func (s *statusStore) recent() []Run {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Run(nil), s.runs...)
}

// diagnostics returns those of the last pass at rev that had any.
func (s *statusStore) diagnostics(rev string) lab.Diagnostics {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.runs {
		if r.Revision == rev && len(r.Diagnostics) > 0 {
			return r.Diagnostics
		}
	}
	return nil
}

// startRun numbers a new pass and marks the controller as passing.
func (s *statusStore) startRun(triggers []string) Run {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	s.status.Passing = true
	return Run{ID: s.nextID, Triggers: triggers, Started: time.Now()}
}

// beginObservation numbers a reading of the host about to start.
func (s *statusStore) beginObservation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observations++
	return s.observations
}

// newest reports whether reading seq is as new as the one shown, or newer.
func (s *statusStore) newest(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return seq >= s.shownObservation
}

// setObserved shows the reading seq of the host, with the agents whose
// device is offline, unless a reading that started later is shown
// already. It reports whether it did.
func (s *statusStore) setObserved(seq uint64, obs *runtime.Observed, offline map[string]bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.shownObservation {
		return false
	}
	s.shownObservation = seq
	s.status.Observed = obs
	if offline != nil {
		s.status.Offline = offline
	}
	return true
}

// record keeps a finished pass, emits its events and tells the sinks.
func (s *statusStore) record(run Run) {
	s.mu.Lock()
	s.status.Passing = false
	r := run
	s.status.LastRun = &r
	s.runs = append([]Run{run}, s.runs...)
	if len(s.runs) > s.history {
		s.runs = s.runs[:s.history]
	}
	s.mu.Unlock()
	for _, res := range run.Results {
		e := Event{Time: time.Now(), Type: "action", Object: res.Action.ObjectKind + "/" + res.Action.Object,
			Message: fmt.Sprintf("%s %s: %s", res.Action.Kind, res.Action.Target, res.Status), Error: res.Status != StatusOK && res.Status != StatusDeferred}
		if res.Error != "" {
			e.Message += ": " + res.Error
		}
		s.emit(e)
	}
	s.emit(Event{Time: time.Now(), Type: "pass", Message: fmt.Sprintf("pass %d %s at %s (%s)", run.ID, run.Result, short(run.Revision), strings.Join(run.Triggers, ", ")), Error: run.Result == ResultError || run.Result == ResultFailed || run.Result == ResultInvalid})
	s.notify()
}

func (s *statusStore) emit(e Event) {
	s.mu.Lock()
	sinks := s.eventSinks
	s.mu.Unlock()
	for _, f := range sinks {
		f(e)
	}
}

func (s *statusStore) notify() {
	s.mu.Lock()
	sinks := s.stateSinks
	s.mu.Unlock()
	if len(sinks) == 0 {
		return
	}
	st := s.get()
	for _, f := range sinks {
		f(st)
	}
}

func (s *statusStore) addSinks(state func(LabStatus), event func(Event)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state != nil {
		s.stateSinks = append(s.stateSinks, state)
	}
	if event != nil {
		s.eventSinks = append(s.eventSinks, event)
	}
}
