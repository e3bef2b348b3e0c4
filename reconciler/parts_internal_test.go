package reconciler

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Any number of triggers makes one pass, which records each reason once,
// and at most maxPendingReasons of them.
func TestTriggerQueueCoalesces(t *testing.T) {
	q := newTriggerQueue()
	for i := range 50 {
		q.add(fmt.Sprintf("webhook %d", i%30))
	}
	q.addCleanSlate("schedule: clean slate")
	<-q.wake
	select {
	case <-q.wake:
		t.Fatal("50 triggers woke the loop twice")
	default:
	}
	req := q.take()
	if len(req.reasons) != maxPendingReasons || !req.cleanSlate || req.retryFailed || req.driftCheck {
		t.Errorf("request %+v: want %d reasons and a clean slate only", req, maxPendingReasons)
	}
	if req := q.take(); len(req.reasons) != 0 || req.cleanSlate {
		t.Errorf("second take %+v, want nothing pending", req)
	}
	q.addSync("api: sync")
	q.addDriftCheck("schedule: drift check")
	if req := q.take(); !req.retryFailed || !req.driftCheck || len(req.reasons) != 2 {
		t.Errorf("request %+v, want a sync and a drift check", req)
	}
}

// A reading of the host that started before the one shown is dropped.
func TestStatusStoreKeepsTheNewestReading(t *testing.T) {
	s := newStatusStore("lab", 5)
	older, newer := s.beginObservation(), s.beginObservation()
	newObs := &runtime.Observed{Containers: make([]runtime.ObservedContainer, 2)}
	if !s.setObserved(newer, newObs, map[string]bool{"a": true}) {
		t.Fatal("the newest reading was not shown")
	}
	if s.setObserved(older, &runtime.Observed{}, nil) {
		t.Error("an older reading replaced a newer one")
	}
	if st := s.get(); st.Observed != newObs || !st.Offline["a"] {
		t.Errorf("status %+v", st)
	}
	for i := range 8 {
		s.record(Run{ID: int64(i)})
	}
	if n := len(s.recent()); n != 5 {
		t.Errorf("%d runs kept, want the history of 5", n)
	}
}

// A failed change is held back until its retry time, which doubles with
// each failure up to the maximum; a change of its inputs, or a sync,
// forgets it; a success too.
func TestFailedChangesHoldBack(t *testing.T) {
	now := time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)
	f := newFailedChanges(10*time.Minute, 30*time.Minute)
	f.now = func() time.Time { return now }
	spec := &lab.ContainerSpec{Kind: lab.KindAgent, Name: "alpha", Hash: "h1"}
	plan := func(hash string) *Changeset {
		s := *spec
		s.Hash = hash
		return &Changeset{Actions: []Action{{Kind: Recreate, ObjectKind: "agent", Object: "alpha", Spec: &s, Old: &runtime.ObservedContainer{State: "running"}}, {Kind: Create, ObjectKind: "agent", Object: "beta", Spec: &lab.ContainerSpec{Hash: "b"}}}}
	}
	fail := func() {
		f.track([]Result{{Action: plan("h1").Actions[0], Status: StatusRolledBack, Error: "new container failed"}})
	}
	fail()
	p := f.holdBack(plan("h1"), false)
	if len(p.Actions) != 1 || p.Actions[0].Object != "beta" || !strings.Contains(strings.Join(p.Warnings, ""), "recreate alpha failed 1 time(s)") {
		t.Fatalf("after one failure: %+v %q", p.Actions, p.Warnings)
	}
	now = now.Add(10 * time.Minute)
	if p := f.holdBack(plan("h1"), false); len(p.Actions) != 2 {
		t.Fatalf("at its retry time the change was held back: %+v", p.Actions)
	}
	fail() // second failure: 20 minutes
	now = now.Add(15 * time.Minute)
	if p := f.holdBack(plan("h1"), false); len(p.Actions) != 1 {
		t.Fatalf("15 minutes after a second failure: %+v, want held back", p.Actions)
	}
	fail()
	fail() // fourth: 80 minutes, capped at 30
	now = now.Add(30 * time.Minute)
	if p := f.holdBack(plan("h1"), false); len(p.Actions) != 2 {
		t.Fatalf("past the maximum retry time: %+v", p.Actions)
	}
	fail()
	if p := f.holdBack(plan("h2"), false); len(p.Actions) != 2 {
		t.Fatalf("a new spec was held back for the old one's failure: %+v", p.Actions)
	}
	if p := f.holdBack(plan("h1"), false); len(p.Actions) != 2 {
		t.Fatalf("the record outlived its change: %+v", p.Actions)
	}
	fail()
	if p := f.holdBack(plan("h1"), true); len(p.Actions) != 2 {
		t.Fatalf("a sync did not retry: %+v", p.Actions)
	}
	// The old container of a recreate that failed, stopped or set aside:
	// its repair is always tried.
	fail()
	stopped := plan("h1")
	stopped.Actions[0].Old = &runtime.ObservedContainer{State: "exited", Aside: true}
	if p := f.holdBack(stopped, false); len(p.Actions) != 2 {
		t.Fatalf("the repair of a stopped old container was held back: %+v", p.Actions)
	}
	fail()
	f.track([]Result{{Action: plan("h1").Actions[0], Status: StatusOK}})
	if p := f.holdBack(plan("h1"), false); len(p.Actions) != 2 {
		t.Fatalf("a success did not forget the failure: %+v", p.Actions)
	}
}

// What a pass that could not run was asked to do is kept for its retry.
func TestTriggerQueueKeepsRequestsOfAFailedPass(t *testing.T) {
	q := newTriggerQueue()
	q.addDriftCheck("schedule: drift check")
	req := q.take()
	q.keep(req)
	q.note("retry")
	if got := q.take(); !got.driftCheck || len(got.reasons) != 1 {
		t.Errorf("retry request %+v, want the drift check kept", got)
	}
}
