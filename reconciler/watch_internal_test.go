package reconciler

import (
	"fmt"
	"testing"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Events that come during a pass count against the flap limit too: a pass
// whose own actions make events (a failed takeover removes its new
// container) must not make the next pass at once, forever.
func TestEventsDuringAPassAreFlapLimited(t *testing.T) {
	c := NewController(ControllerOptions{})
	c.status.Passing = true
	events := make(chan runtime.Event, 20)
	for i := range 20 {
		events <- runtime.Event{Kind: string(lab.KindService), Object: "web", Name: fmt.Sprintf("web-%d", i), Action: "destroy"}
	}
	close(events)
	c.WatchEvents(events, &FlapLimiter{Max: 5, Window: time.Hour})
	if n := len(c.pending); n != 5 {
		t.Errorf("%d passes triggered by 20 events of one object; want the flap limit, 5", n)
	}
}
