package reconciler

import (
	"fmt"
	"testing"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Events that come during a pass are most likely its own doing: they
// trigger no pass at once (a failed pass waits for its backoff) and do
// not use up the flap limit that guards against crash loops; one more
// pass checks after a pass that succeeded.
func TestEventsDuringAPass(t *testing.T) {
	c := NewController(ControllerOptions{})
	limit := &FlapLimiter{Max: 2, Window: time.Hour}
	c.store.update(func(s *LabStatus) { s.Passing = true })
	events := make(chan runtime.Event, 20)
	for i := range 20 {
		events <- runtime.Event{Kind: string(lab.KindService), Object: "web", Name: fmt.Sprintf("web-%d", i), Action: "destroy"}
	}
	close(events)
	c.WatchEvents(events, limit)
	if len(c.queue.pending) != 0 || !c.queue.eventsInPass {
		t.Errorf("events during a pass: %d passes triggered at once (want 0), noted for after the pass: %v", len(c.queue.pending), c.queue.eventsInPass)
	}
	// Outside a pass, a crash is still repaired: the budget is whole.
	c.store.update(func(s *LabStatus) { s.Passing = false })
	events = make(chan runtime.Event, 3)
	for range 3 {
		events <- runtime.Event{Kind: string(lab.KindService), Object: "web", Name: "web", Action: "die"}
	}
	close(events)
	c.WatchEvents(events, limit)
	if n := len(c.queue.pending); n != 1 {
		t.Errorf("%d pending triggers after 3 crashes outside a pass, want 1 (coalesced, within the limit of 2)", n)
	}
}
