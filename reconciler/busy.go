package reconciler

import (
	"log/slog"
	"time"

	"github.com/labsync/labsync/lab"
)

// busyTracker remembers, for each object whose change waits for a job,
// that change and since when it waits. A record belongs to its change: it
// goes when the change is applied, reverted or replaced. Only the
// controller's loop uses it.
type busyTracker struct {
	records map[string]busyRecord
	now     func() time.Time
}

// busyRecord is a change that waits for an agent's job: what it would
// make (the spec hash; the target for stops and removals) and since when.
type busyRecord struct {
	change string
	since  time.Time
}

func newBusyTracker() *busyTracker {
	return &busyTracker{records: map[string]busyRecord{}, now: time.Now}
}

// changeOf names what an action would make, so that a record belongs to
// one change.
func changeOf(a *Action) string {
	if a.Spec != nil {
		return string(a.Kind) + " " + a.Spec.Hash
	}
	return string(a.Kind) + " " + a.Target
}

// waiting reports whether any change waits for a job.
func (b *busyTracker) waiting() bool { return len(b.records) > 0 }

// expired lists the agents whose pending change, the one in plan, has
// waited longer than the lab's busy timeout for a job to end, when the
// policy is to recreate them then.
func (b *busyTracker) expired(d *lab.Desired, plan *Changeset, log *slog.Logger) map[string]bool {
	out := map[string]bool{}
	if d.Update.BusyPolicy != lab.BusyPolicyRecreate {
		return out
	}
	for i := range plan.Actions {
		a := &plan.Actions[i]
		key := a.ObjectKind + "/" + a.Object
		rec, ok := b.records[key]
		if !ok || rec.change != changeOf(a) || b.now().Sub(rec.since) < d.Update.BusyTimeout {
			continue
		}
		out[a.Object] = true
		log.Warn("agent busy for longer than busy_timeout; recreating it anyway", "object", key, "waited", b.now().Sub(rec.since).Round(time.Second))
	}
	return out
}

// track remembers since when each change deferred for a job waits; every
// other record is forgotten: its change went through, was reverted or
// replaced by another (which waits afresh).
func (b *busyTracker) track(results []Result) {
	waiting := map[string]string{}
	for i := range results {
		r := &results[i]
		if r.Status != StatusDeferred || r.WaitsFor != WaitJob {
			continue
		}
		key := r.Action.ObjectKind + "/" + r.Action.Object
		waiting[key] = changeOf(&r.Action)
		if rec, ok := b.records[key]; !ok || rec.change != waiting[key] {
			b.records[key] = busyRecord{change: waiting[key], since: b.now()}
		}
	}
	for key := range b.records {
		if _, ok := waiting[key]; !ok {
			delete(b.records, key)
		}
	}
}
