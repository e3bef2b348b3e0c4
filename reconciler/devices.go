package reconciler

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/labsync/labsync/runtime"
)

// Two agents must never drive one device. A device is held by every
// container that may run with it — declared or not, held, orphaned, set
// aside — until that container is stopped or gone; a container is started
// with a device only when no other container holds it. The ledger is
// filled from what the plan observed and kept by the apply as it stops,
// removes and starts containers.

// devicesOf returns, for each device, the observed containers that may run
// with it: running, restarting or paused.
func devicesOf(cs []runtime.ObservedContainer) map[string][]runtime.ObservedContainer {
	out := map[string][]runtime.ObservedContainer{}
	for _, c := range cs {
		if c.Device != "" && mayRun(c.State) {
			out[c.Device] = append(out[c.Device], c)
		}
	}
	return out
}

// mayRun reports whether a container in state may drive its device now or
// without labsync doing anything.
func mayRun(state string) bool {
	switch state {
	case "running", "restarting", "paused":
		return true
	}
	return false
}

// deviceLedger records which containers hold each device during an apply.
type deviceLedger struct {
	mu sync.Mutex
	// holders maps a device to its holders: container IDs, or the claim
	// key of a container being made, each with a name for messages.
	holders map[string]map[string]string
	// released counts releases, so that a round of waiting actions knows
	// whether another round can make progress.
	released int
}

func newDeviceLedger(observed map[string][]runtime.ObservedContainer) *deviceLedger {
	l := &deviceLedger{holders: map[string]map[string]string{}}
	for d, cs := range observed {
		for _, c := range cs {
			l.hold(d, c.ID, c.Name)
		}
	}
	return l
}

func (l *deviceLedger) hold(device, key, name string) {
	if l.holders[device] == nil {
		l.holders[device] = map[string]string{}
	}
	l.holders[device][key] = name
}

// claim makes key a holder of device unless a holder other than key and
// own holds it; then it says who.
func (l *deviceLedger) claim(device, key, name string, own ...string) *deviceWait {
	if device == "" {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var w *deviceWait
	for k, n := range l.holders[device] {
		if k != key && !slices.Contains(own, k) {
			if w == nil {
				w = &deviceWait{device: device}
			}
			w.names = append(w.names, n)
			w.keys = append(w.keys, k)
		}
	}
	if w != nil {
		sort.Strings(w.names)
		return w
	}
	l.hold(device, key, name)
	return nil
}

// release ends key's hold of device: its container is stopped or gone.
func (l *deviceLedger) release(device, key string) {
	if device == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.holders[device][key]; ok {
		delete(l.holders[device], key)
		l.released++
	}
}

// releases returns the number of releases so far.
func (l *deviceLedger) releases() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released
}

// deviceWait is an action that cannot go on yet: the device its container
// would run with is held by another container.
type deviceWait struct {
	device string
	// names and keys are the holders in the way: their names, and their
	// ledger keys.
	names, keys []string
	// note says what the action did before it had to wait.
	note string
}

func (w *deviceWait) Error() string {
	msg := fmt.Sprintf("device %s is still driven by %s; this agent starts when that container is stopped or gone", w.device, strings.Join(w.names, ", "))
	if w.note != "" {
		msg += "; " + w.note
	}
	return msg
}

// newKey is the ledger key of the container an action is making.
func newKey(act *Action) string { return "new:" + act.ObjectKind + "/" + act.Object }
