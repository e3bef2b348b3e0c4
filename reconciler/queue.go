package reconciler

import (
	"slices"
	"sync"
)

// maxPendingReasons bounds the reasons a pass records for its triggers.
const maxPendingReasons = 20

// triggerQueue coalesces triggers: however many arrive while a pass runs,
// they make exactly one more pass, which records their reasons (each
// once, at most maxPendingReasons).
type triggerQueue struct {
	wake chan struct{}

	mu         sync.Mutex
	pending    []string
	cleanSlate bool
	// retryFailed asks the next pass to try again the changes that
	// failed before (see failedChanges).
	retryFailed bool
	// driftCheck asks the next pass for a deep drift check.
	driftCheck bool
	// eventsInPass is set when a die, destroy or unhealthy event came
	// during a pass: one more pass checks, unless the pass failed and its
	// retry is due anyway.
	eventsInPass bool
}

func newTriggerQueue() *triggerQueue {
	return &triggerQueue{wake: make(chan struct{}, 1)}
}

// add records reason and wakes the loop; it never blocks.
func (q *triggerQueue) add(reason string) {
	q.note(reason)
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// note records reason without waking the loop: for triggers the loop
// itself sees (its timers).
func (q *triggerQueue) note(reason string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) < maxPendingReasons && !slices.Contains(q.pending, reason) {
		q.pending = append(q.pending, reason)
	}
}

// addCleanSlate asks for the next pass to be a clean slate.
func (q *triggerQueue) addCleanSlate(reason string) {
	q.mu.Lock()
	q.cleanSlate = true
	q.mu.Unlock()
	q.add(reason)
}

// addSync asks for a pass that also tries again what failed before.
func (q *triggerQueue) addSync(reason string) {
	q.mu.Lock()
	q.retryFailed = true
	q.mu.Unlock()
	q.add(reason)
}

// addDriftCheck asks for a pass with a deep drift check.
func (q *triggerQueue) addDriftCheck(reason string) {
	q.mu.Lock()
	q.driftCheck = true
	q.mu.Unlock()
	q.add(reason)
}

// passRequest is what the next pass is asked to do.
type passRequest struct {
	reasons     []string
	cleanSlate  bool
	retryFailed bool
	driftCheck  bool
}

// take returns and forgets the request for the next pass; no reasons
// means no pass is due.
func (q *triggerQueue) take() passRequest {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		return passRequest{} // a spare wake-up: what is asked waits for its pass
	}
	req := passRequest{reasons: q.pending, cleanSlate: q.cleanSlate, retryFailed: q.retryFailed, driftCheck: q.driftCheck}
	q.pending, q.cleanSlate, q.retryFailed, q.driftCheck = nil, false, false, false
	return req
}

// keep puts back what a pass that could not run was asked to do besides
// looking again (a clean slate, a sync, a drift check), for its retry.
func (q *triggerQueue) keep(req passRequest) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cleanSlate = q.cleanSlate || req.cleanSlate
	q.retryFailed = q.retryFailed || req.retryFailed
	q.driftCheck = q.driftCheck || req.driftCheck
}

// markEventsInPass notes that events came during a pass.
func (q *triggerQueue) markEventsInPass() {
	q.mu.Lock()
	q.eventsInPass = true
	q.mu.Unlock()
}

// takeEventsInPass reports and forgets whether events came during the
// last pass.
func (q *triggerQueue) takeEventsInPass() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	v := q.eventsInPass
	q.eventsInPass = false
	return v
}
