package testenv

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/labsync/labsync/runtime"
)

// DeviceWatch follows, from the engine's event stream, which containers of
// a lab run with each device (its io.labsync.device label) and with each
// object, and remembers every moment two ran at once: the promise that two
// agents never drive one device.
type DeviceWatch struct {
	mu sync.Mutex
	// up maps a device (or "object:<kind>/<name>") to the running
	// containers, by ID, with their names.
	up         map[string]map[string]string
	violations []string
	marker     string
	markerSeen bool
}

// WatchDevices starts a DeviceWatch of labName's containers. What runs
// already counts.
func WatchDevices(t testing.TB, rt *runtime.Client, labName string) *DeviceWatch {
	t.Helper()
	w := &DeviceWatch{up: map[string]map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := filters.NewArgs(filters.Arg("type", "container"), filters.Arg("label", runtime.LabelLab+"="+labName))
	msgs, errs := rt.API().Events(ctx, events.ListOptions{Filters: f})
	running, err := rt.API().ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+labName))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range running {
		attrs := map[string]string{"name": strings.TrimPrefix(c.Names[0], "/")}
		for k, v := range c.Labels {
			attrs[k] = v
		}
		w.see(events.Message{Action: events.ActionStart, Actor: events.Actor{ID: c.ID, Attributes: attrs}})
	}
	go func() {
		for {
			select {
			case m := <-msgs:
				w.see(m)
			case <-errs:
				return
			}
		}
	}()
	return w
}

func (w *DeviceWatch) see(m events.Message) {
	a := m.Actor.Attributes
	if a["name"] != "" && a["name"] == w.marker {
		w.mu.Lock()
		w.markerSeen = true
		w.mu.Unlock()
		return
	}
	var keys []string
	if d := a[runtime.LabelDevice]; d != "" {
		keys = append(keys, "device "+d)
	}
	if a[runtime.LabelObject] != "" {
		keys = append(keys, "object "+a[runtime.LabelKind]+"/"+a[runtime.LabelObject])
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		if w.up[k] == nil {
			w.up[k] = map[string]string{}
		}
		switch m.Action {
		case events.ActionStart, events.ActionUnPause:
			w.up[k][m.Actor.ID] = a["name"]
			if len(w.up[k]) > 1 {
				var names []string
				for _, n := range w.up[k] {
					names = append(names, n)
				}
				sort.Strings(names)
				w.violations = append(w.violations, fmt.Sprintf("%s run by %d containers at once: %v", k, len(names), names))
			}
		case events.ActionDie, events.ActionDestroy, events.ActionPause:
			delete(w.up[k], m.Actor.ID)
		}
	}
}

// Violations returns every moment a device or an object ran in two
// containers at once.
func (w *DeviceWatch) Violations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.violations...)
}

// Sync returns once the watch has seen every event up to now: it makes a
// marker container (never started) of the lab and waits for its event,
// which the engine sends after all earlier ones.
func (w *DeviceWatch) Sync(t testing.TB, rt *runtime.Client, labName, image string) {
	t.Helper()
	ctx := context.Background()
	marker := Name(t) + "-sync"
	w.mu.Lock()
	w.marker, w.markerSeen = marker, false
	w.mu.Unlock()
	c, err := rt.API().ContainerCreate(ctx, &container.Config{Image: image, Labels: map[string]string{runtime.LabelLab: labName, LabelTest: "sync"}}, nil, nil, nil, marker)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.API().ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	Eventually(t, 30*time.Second, "the watch never saw the marker's event", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.markerSeen
	})
}
