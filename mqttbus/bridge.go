package mqttbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/testflinger"
)

// Controller is what the bridge needs of the daemon's controller.
type Controller interface {
	Status() reconciler.LabStatus
	// Sync asks for a pass that also retries what failed before.
	Sync(reason string)
	RestartAgent(ctx context.Context, name string, force bool) error
	Emit(e reconciler.Event)
}

// BridgeOptions configure a Bridge.
type BridgeOptions struct {
	Bus        *Bus
	Controller Controller
	// SubmitPoll is how often a submitted job's state is read (default
	// 10s); SubmitFollow bounds how long it is followed (default 24h).
	SubmitPoll, SubmitFollow time.Duration
	Logger                   *slog.Logger
	// Context ends the following of submitted jobs (the daemon's life).
	Context context.Context
}

// Bridge connects the controller to MQTT: it publishes the status tree
// and events, and takes commands and job submissions.
type Bridge struct {
	opts BridgeOptions
	bus  *Bus
	log  *slog.Logger
	sem  chan struct{} // bounds concurrent submissions

	mu      sync.Mutex
	objects map[string]objectState // topic → last state
}

type objectState struct {
	body    string // the state without its time
	changed time.Time
}

// NewBridge subscribes the commands and the submit topics.
func NewBridge(o BridgeOptions) *Bridge {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SubmitPoll == 0 {
		o.SubmitPoll = 10 * time.Second
	}
	if o.SubmitFollow == 0 {
		o.SubmitFollow = 24 * time.Hour
	}
	if o.Context == nil {
		o.Context = context.Background()
	}
	b := &Bridge{opts: o, bus: o.Bus, log: o.Logger, sem: make(chan struct{}, 4), objects: map[string]objectState{}}
	p := o.Bus.Prefix()
	o.Bus.Subscribe(p+"/cmd/#", 1, b.onCommand)
	o.Bus.Subscribe(p+"/agents/+/cmd", 1, b.onAgentCommand)
	o.Bus.Subscribe("+/submit", 1, b.onSubmit)
	return b
}

// stateMsg is the payload of <prefix>/agents/<name>/state and
// <prefix>/services/<name>/state.
type stateMsg struct {
	reconciler.ObjectStatus
	Changed time.Time `json:"changed"`
}

// Publish publishes the status and every object's state that changed.
func (b *Bridge) Publish(st reconciler.LabStatus) {
	p := b.bus.Prefix()
	sum, _ := json.Marshal(st.Summary())
	b.bus.Retain(p+"/status", sum)
	seen := map[string]bool{}
	for _, o := range st.Objects() {
		// Docker's human status ("Up 3 seconds") changes every second;
		// the state and health say what matters.
		o.Status = ""
		kind := "agents"
		if o.Kind == string(lab.KindService) {
			kind = "services"
		}
		topic := fmt.Sprintf("%s/%s/%s/state", p, kind, o.Name)
		seen[topic] = true
		body, _ := json.Marshal(o)
		b.mu.Lock()
		prev, ok := b.objects[topic]
		if !ok || prev.body != string(body) {
			prev = objectState{body: string(body), changed: time.Now()}
			b.objects[topic] = prev
		}
		b.mu.Unlock()
		msg, _ := json.Marshal(stateMsg{ObjectStatus: o, Changed: prev.changed.UTC()})
		b.bus.Retain(topic, msg)
	}
	b.mu.Lock()
	var gone []string
	for topic := range b.objects {
		if !seen[topic] {
			gone = append(gone, topic)
			delete(b.objects, topic)
		}
	}
	b.mu.Unlock()
	for _, t := range gone {
		b.bus.Forget(t)
	}
}

// Event publishes an event on <prefix>/events (not retained).
func (b *Bridge) Event(e reconciler.Event) {
	data, _ := json.Marshal(e)
	b.bus.Publish(b.bus.Prefix()+"/events", data, 1)
}

// errorEvent logs a refused or failed command or submission and publishes
// it as an error event of type typ.
func (b *Bridge) errorEvent(typ, object, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.log.Warn("mqtt: refused", "object", object, "reason", msg)
	b.opts.Controller.Emit(reconciler.Event{Type: typ, Object: object, Message: msg, Error: true})
}

func (b *Bridge) onCommand(topic string, payload []byte) {
	cmd := strings.TrimPrefix(topic, b.bus.Prefix()+"/cmd/")
	switch cmd {
	case "sync":
		b.opts.Controller.Sync("mqtt: sync")
		b.opts.Controller.Emit(reconciler.Event{Type: "command", Message: "sync requested over MQTT"})
	default:
		b.errorEvent("command", "", "unknown command %q on %s; known: %s/cmd/sync, %s/agents/<name>/cmd restart [--force]", clip(cmd), clip(topic), b.bus.Prefix(), b.bus.Prefix())
	}
}

// onAgentCommand handles <prefix>/agents/<name>/cmd: "restart", refused
// while the agent runs a job, or "restart --force".
func (b *Bridge) onAgentCommand(topic string, payload []byte) {
	name := strings.TrimSuffix(strings.TrimPrefix(topic, b.bus.Prefix()+"/agents/"), "/cmd")
	cmd := strings.Join(strings.Fields(string(payload)), " ")
	var force bool
	switch cmd {
	case "restart":
	case "restart --force":
		force = true
	default:
		b.errorEvent("command", "agent/"+clip(name), "unknown agent command %q; known: restart, restart --force", clip(cmd))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := b.opts.Controller.RestartAgent(ctx, name, force)
	var busy *reconciler.AgentBusyError
	switch {
	case errors.As(err, &busy):
		b.errorEvent("command", "agent/"+clip(name), "restart refused: %v; publish \"restart --force\" to restart it anyway", err)
	case err != nil:
		b.errorEvent("command", "agent/"+clip(name), "restart: %v", err)
	}
}

// clip shortens untrusted text for messages.
func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

func (b *Bridge) status(sut string, st SubmitStatus) {
	st.Time = time.Now().UTC().Format(time.RFC3339)
	data, _ := json.Marshal(st)
	b.bus.Publish(sut+"/submit_status", data, 1)
}

// onSubmit handles <sut>/submit: only the lab's own agents are served;
// others (another lab's on the same broker) are ignored with an event.
func (b *Bridge) onSubmit(topic string, payload []byte) {
	sut := strings.TrimSuffix(topic, "/submit")
	st := b.opts.Controller.Status()
	if st.Desired == nil {
		return
	}
	info, ok := st.Desired.Agents[sut]
	if !ok {
		b.errorEvent("submit", "agent/"+clip(sut), "submit for %q ignored: no such agent in lab %s", clip(sut), st.Lab)
		return
	}
	// At most a few submissions are parsed and sent at once: each may
	// hold a parsed job of MaxSubmitNodes nodes.
	select {
	case b.sem <- struct{}{}:
	default:
		b.status(sut, SubmitStatus{State: "error", Error: "too many submissions at once; try again"})
		return
	}
	defer func() { <-b.sem }()
	job, err := ParseSubmit(sut, payload, info.JobTemplate, info.Queues)
	if err != nil {
		b.status(sut, SubmitStatus{State: "error", Error: err.Error()})
		b.errorEvent("submit", "agent/"+sut, "submit refused: %v", err)
		return
	}
	if info.Server == "" {
		b.status(sut, SubmitStatus{State: "error", Error: "no Testflinger server: set testflinger.server in lab.yaml"})
		return
	}
	client := testflinger.NewClient(info.Server)
	ctx, cancel := context.WithTimeout(b.opts.Context, 30*time.Second)
	id, err := client.SubmitJob(ctx, job)
	cancel()
	if err != nil {
		b.status(sut, SubmitStatus{State: "error", Error: err.Error()})
		b.errorEvent("submit", "agent/"+sut, "submit failed: %v", err)
		return
	}
	b.log.Info("job submitted", "sut", sut, "job_id", id)
	b.status(sut, SubmitStatus{State: "submitted", JobID: id})
	b.opts.Controller.Emit(reconciler.Event{Type: "submit", Object: "agent/" + sut, Message: "job " + id + " submitted"})
	go b.follow(client, sut, id)
}

// follow publishes the job's state changes until it ends.
func (b *Bridge) follow(client *testflinger.Client, sut, id string) {
	ctx, cancel := context.WithTimeout(b.opts.Context, b.opts.SubmitFollow)
	defer cancel()
	tick := time.NewTicker(b.opts.SubmitPoll)
	defer tick.Stop()
	last := ""
	for {
		state, err := client.JobState(ctx, id)
		if err == nil && state != "" && state != last {
			last = state
			b.status(sut, SubmitStatus{State: state, JobID: id})
			if testflinger.FinalJobState(state) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
