package reconciler

import (
	"fmt"
	"time"
)

// failedChanges remembers each recreate that failed (the new container
// did not come up, and the old one was restored) by the inputs
// that made it: its spec hash. A pass does not try the same change again
// until its inputs change, an operator asks (Controller.Sync), or its
// retry time comes, doubling from First up to Max. Without it, each poll
// would stop a good agent, wait for a bad one and roll back. Only the
// controller's loop uses it.
type failedChanges struct {
	first, max time.Duration
	now        func() time.Time
	records    map[string]failedRecord
}

type failedRecord struct {
	change string
	at     time.Time
	count  int
	err    string
}

func newFailedChanges(first, max time.Duration) *failedChanges {
	return &failedChanges{first: first, max: max, now: time.Now, records: map[string]failedRecord{}}
}

// remembered reports whether a's change is remembered when it fails:
// the replacement of a container that runs under its own name, which a
// failure stops and restores. Everything else — creates, which have
// nothing to keep running, and repairs (starts, restores, finishing a
// recreate whose old container is stopped or set aside) — is always
// tried: holding it back would leave nothing running.
func remembered(a *Action) bool {
	return a.Spec != nil && (a.Kind == Recreate || a.Kind == Adopt) && a.Old != nil && a.Old.State == "running" && !a.Old.Aside
}

// retryAt is when a change that failed count times may be tried again.
func (f *failedChanges) retryAt(r failedRecord) time.Time {
	d := f.first
	for i := 1; i < r.count && d < f.max; i++ {
		d *= 2
	}
	return r.at.Add(min(d, f.max))
}

// holdBack returns plan without the changes that failed before and are
// not due again, with a warning for each. Records of objects whose change
// is not in plan any more (reverted, or replaced by another) are
// forgotten; so are all of them when retry is set.
func (f *failedChanges) holdBack(plan *Changeset, retry bool) *Changeset {
	if retry {
		clear(f.records)
	}
	if len(f.records) == 0 {
		return plan
	}
	pending := map[string]string{}
	for i := range plan.Actions {
		if a := &plan.Actions[i]; remembered(a) {
			pending[a.ObjectKind+"/"+a.Object] = changeOf(a)
		}
	}
	for key, r := range f.records {
		if pending[key] != r.change {
			delete(f.records, key)
		}
	}
	out := *plan
	out.Actions = nil
	for _, a := range plan.Actions {
		r, ok := f.records[a.ObjectKind+"/"+a.Object]
		if !ok || !remembered(&a) || !f.now().Before(f.retryAt(r)) {
			out.Actions = append(out.Actions, a)
			continue
		}
		out.Warnings = append(out.Warnings, fmt.Sprintf("%s %s failed %d time(s), last at %s: %s; labsync does not try the same change again until its files change, a sync is asked for (labsync sync, POST /api/v1/sync, MQTT cmd/sync) or %s",
			a.Kind, a.Object, r.count, r.at.UTC().Format(time.RFC3339), r.err, f.retryAt(r).UTC().Format(time.RFC3339)))
	}
	if len(out.Actions) == len(plan.Actions) {
		return plan
	}
	if out.Actions == nil {
		out.Actions = []Action{}
	}
	return &out
}

// track records the changes of results that failed and forgets those that
// went through.
func (f *failedChanges) track(results []Result) {
	for i := range results {
		r := &results[i]
		if !remembered(&r.Action) {
			continue
		}
		key, change := r.Action.ObjectKind+"/"+r.Action.Object, changeOf(&r.Action)
		switch r.Status {
		case StatusOK:
			delete(f.records, key)
		case StatusFailed, StatusRolledBack:
			rec := f.records[key]
			if rec.change != change {
				rec = failedRecord{change: change}
			}
			rec.count++
			rec.at, rec.err = f.now(), r.Error
			f.records[key] = rec
		}
	}
}
