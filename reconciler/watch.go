package reconciler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/labsync/labsync/runtime"
)

// FlapLimiter drops events of an object that triggered more than Max
// passes within Window, so a crash-looping container cannot keep the
// controller busy.
type FlapLimiter struct {
	Max    int
	Window time.Duration

	mu   sync.Mutex
	seen map[string][]time.Time
}

// Allow reports whether an event of object at now may trigger a pass.
func (f *FlapLimiter) Allow(object string, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = map[string][]time.Time{}
	}
	recent := f.seen[object][:0]
	for _, t := range f.seen[object] {
		if now.Sub(t) < f.Window {
			recent = append(recent, t)
		}
	}
	if len(recent) >= f.Max {
		f.seen[object] = recent
		return false
	}
	f.seen[object] = append(recent, now)
	return true
}

// watch (re)opens the event stream for labName. Only Run's goroutine
// calls it.
func (c *Controller) watch(labName string) {
	if c.opts.Events == nil || c.runCtx == nil || labName == c.watching {
		return
	}
	if c.stopWatcher != nil {
		c.stopWatcher()
	}
	ctx, cancel := context.WithCancel(c.runCtx)
	c.watching, c.stopWatcher = labName, cancel
	limit := c.opts.FlapLimit
	if limit == nil {
		limit = &FlapLimiter{Max: 5, Window: 10 * time.Minute}
	}
	go c.WatchEvents(c.opts.Events(ctx, labName), limit)
}

// WatchEvents refreshes the observed state on each event of a managed
// container, and triggers a pass for each die, destroy or unhealthy event
// within the flap limit, until events closes.
func (c *Controller) WatchEvents(events <-chan runtime.Event, limit *FlapLimiter) {
	for e := range events {
		c.Refresh()
		if e.Action == "start" || e.Action == "stop" || e.Action == "health_status: healthy" || e.Action == "health_status: starting" {
			continue // nothing to repair
		}
		// During a pass it is most likely the pass's own doing: one more
		// pass checks after it, unless it failed and waits for its retry
		// (a failed takeover makes events; it must not run again at once,
		// past its backoff). Such events do not count against the flap
		// limit, which is for containers that crash on their own.
		if c.store.get().Passing {
			c.queue.markEventsInPass()
			continue
		}
		key := e.Kind + "/" + e.Object
		if !limit.Allow(key, time.Now()) {
			c.log.Warn("event ignored: flap limit reached", "object", key, "action", e.Action)
			continue
		}
		c.Trigger(fmt.Sprintf("docker: %s %s", e.Name, e.Action))
	}
}

// refresher re-observes the host whenever an event asks, coalescing bursts,
// so published state follows containers within seconds, between passes.
func (c *Controller) refresher(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.refresh:
		}
		d := c.store.get().Desired
		if d == nil {
			continue
		}
		seq := c.store.beginObservation()
		obs, err := c.opts.Docker.Observe(ctx, d.Lab)
		if err != nil {
			c.log.Warn("refresh of the observed state failed", "err", err)
			continue
		}
		// Between passes only: a pass under way is changing containers.
		shown := false
		if c.passMu.TryLock() {
			shown = c.setObserved(ctx, seq, obs)
			c.passMu.Unlock()
		} else {
			shown = c.store.setObserved(seq, obs, nil)
		}
		if !shown {
			c.log.Debug("observed state not refreshed: a newer reading is shown", "containers", len(obs.Containers))
			continue
		}
		c.log.Debug("observed state refreshed", "containers", len(obs.Containers))
		c.store.notify()
	}
}

// Refresh asks for the observed state to be read again soon; it never
// blocks.
func (c *Controller) Refresh() {
	select {
	case c.refresh <- struct{}{}:
	default:
	}
}
