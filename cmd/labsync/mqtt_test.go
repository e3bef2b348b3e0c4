package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
)

// fakeTestflinger speaks the Testflinger REST endpoints the submit bridge
// uses: POST /v1/job and GET /v1/result/<id>, with a job that goes through
// waiting, test and complete.
type fakeTestflinger struct {
	*httptest.Server
	mu    sync.Mutex
	jobs  []map[string]any
	reads int
}

func newFakeTestflinger(t *testing.T) *fakeTestflinger {
	f := &fakeTestflinger{}
	states := []string{"waiting", "test", "complete"}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/job":
			var job map[string]any
			if err := json.NewDecoder(r.Body).Decode(&job); err != nil {
				http.Error(w, "bad json", http.StatusBadRequest)
				return
			}
			f.jobs = append(f.jobs, job)
			fmt.Fprintf(w, `{"job_id": "00000000-0000-4000-8000-%012d"}`, len(f.jobs))
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/result/"):
			st := states[min(f.reads, len(states)-1)]
			f.reads++
			fmt.Fprintf(w, `{"job_state": %q}`, st)
		case strings.HasPrefix(r.URL.Path, "/v1/agents/data/"):
			io.WriteString(w, `{"state": "waiting", "job_id": ""}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeTestflinger) received() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.jobs...)
}

type objectMsg struct {
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Health  string    `json:"health"`
	Changed time.Time `json:"changed"`
}

func lastState(t *testing.T, s *testenv.Subscriber, topic string) objectMsg {
	t.Helper()
	var o objectMsg
	if m, ok := s.Last(topic); ok {
		_ = json.Unmarshal([]byte(m.Payload), &o)
	}
	return o
}

func mqttLab(t *testing.T, tf string, extra ...string) *gitLab {
	g := newGitLab(t, extra...)
	g.repo.Commit("mqtt lab", map[string]string{
		"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image:\n    name: %[2]s\n  healthcheck: {test: [CMD, labsync-agent, healthcheck], interval: 1s}\n  update:\n    min_uptime: 200ms\nmqtt:\n  prefix: lab/%[1]s\ntestflinger:\n  server: %[3]s\n",
			g.name, testenv.StandinImage(t, g.rt), tf),
		"sut/beta.conf":  agentConfFor("beta"),
		"sut/alpha.yaml": "job_queue: alpha\nprovision_data:\n  distro: noble\ntest_data:\n  test_cmds: placeholder\n",
	})
	return g
}

func TestMQTTStatusCommandsAndSubmit(t *testing.T) {
	mosq := testenv.StartMosquitto(t)
	tf := newFakeTestflinger(t)
	g := mqttLab(t, tf.URL, "--mqtt", mosq.URL, "--flap-limit", "0", "--submit-poll", "100ms")
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha", "beta")
	d.settle()
	prefix := "lab/" + g.name

	// A subscriber that connects after the pass gets every retained state.
	sub := testenv.Subscribe(t, mosq.URL, prefix+"/#")
	testenv.Eventually(t, 10*time.Second, "retained status not received", func() bool {
		a, b := lastState(t, sub, prefix+"/agents/alpha/state"), lastState(t, sub, prefix+"/agents/beta/state")
		_, st := sub.Last(prefix + "/status")
		on, _ := sub.Last(prefix + "/online")
		return st && a.Health == "healthy" && b.Health == "healthy" && on.Payload == "online"
	})
	for _, m := range sub.Messages() {
		if strings.HasSuffix(m.Topic, "/state") && !m.Retained {
			t.Errorf("%s arrived not retained", m.Topic)
		}
	}

	// Stopping an agent by hand changes its published state within seconds
	// (no pass repairs it: events trigger none with --flap-limit 0).
	stoppedAt := time.Now()
	if err := g.rt.StopContainer(context.Background(), g.containers(t)["beta"].ID, time.Second); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "stopped agent not published", func() bool {
		return lastState(t, sub, prefix+"/agents/beta/state").Health == "stopped"
	})
	t.Logf("stop to MQTT state: %s", time.Since(stoppedAt).Round(time.Millisecond))

	// Commands: sync repairs it; restart restarts an agent.
	sub.Publish(prefix+"/cmd/sync", nil)
	testenv.Eventually(t, 30*time.Second, "cmd/sync did not repair beta", func() bool {
		return lastState(t, sub, prefix+"/agents/beta/state").Health == "healthy"
	})
	d.settle() // a restart is refused while a pass runs
	before := g.containers(t)["alpha"]
	sub.Publish(prefix+"/agents/alpha/cmd", []byte("restart"))
	testenv.Eventually(t, 30*time.Second, "restart command did nothing", func() bool {
		info, err := g.rt.API().ContainerInspect(context.Background(), before.ID)
		return err == nil && info.State.Running && info.State.StartedAt != "" && !strings.Contains(before.Status, info.State.StartedAt) && info.RestartCount == 0 && startedAfter(info.State.StartedAt, stoppedAt)
	})

	// A job on alpha/submit reaches Testflinger, with the template.
	status := testenv.Subscribe(t, mosq.URL, "+/submit_status")
	sub.Publish("alpha/submit", []byte("echo hello\nuname -a"))
	testenv.Eventually(t, 10*time.Second, "job never submitted", func() bool { return len(tf.received()) == 1 })
	job := tf.received()[0]
	td, _ := job["test_data"].(map[string]any)
	pd, _ := job["provision_data"].(map[string]any)
	if job["job_queue"] != "alpha" || td["test_cmds"] != "echo hello\nuname -a" || pd["distro"] != "noble" {
		t.Errorf("job = %v", job)
	}
	testenv.Eventually(t, 10*time.Second, "job states not followed", func() bool {
		var seen []string
		for _, m := range status.Messages() {
			var s struct {
				State string `json:"state"`
				JobID string `json:"job_id"`
			}
			json.Unmarshal([]byte(m.Payload), &s)
			if m.Topic == "alpha/submit_status" && strings.HasSuffix(s.JobID, "000000000001") {
				seen = append(seen, s.State)
			}
		}
		return strings.Join(seen, ",") == "submitted,waiting,test,complete"
	})

	// Malformed input gives an error status and leaves the daemon working.
	events := testenv.Subscribe(t, mosq.URL, prefix+"/events")
	for _, p := range [][]byte{{0xff, 0xfe, 0x00, 0x01}, []byte(strings.Repeat("x", 1<<20)), []byte("job_queue: [alpha\ntest_data: {"),
		[]byte("job_queue: other-lab-queue\ntest_data:\n  test_cmds: echo pwned\n")} {
		sub.Publish("alpha/submit", p)
	}
	sub.Publish("no-such-sut/submit", []byte("echo hi"))
	sub.Publish(prefix+"/cmd/frobnicate", nil)
	sub.Publish(prefix+"/agents/alpha/cmd", []byte("explode"))
	sub.Publish(prefix+"/agents/nobody/cmd", []byte("restart"))
	testenv.Eventually(t, 10*time.Second, "malformed payloads not all answered", func() bool {
		errs, foreign := 0, false
		for _, m := range status.Messages() {
			if m.Topic == "alpha/submit_status" && strings.Contains(m.Payload, `"state":"error"`) {
				errs++
				foreign = foreign || strings.Contains(m.Payload, `job_queue \"other-lab-queue\" is not a queue of alpha (its queues: alpha)`)
			}
		}
		evs := 0
		for _, m := range events.Messages() {
			if strings.Contains(m.Payload, `"error":true`) && (strings.Contains(m.Payload, "no-such-sut") || strings.Contains(m.Payload, "frobnicate") || strings.Contains(m.Payload, "explode") || strings.Contains(m.Payload, "nobody")) {
				evs++
			}
		}
		return errs == 4 && foreign && evs == 4
	})
	if n := len(tf.received()); n != 1 {
		t.Errorf("%d jobs reached Testflinger, want only the good one", n)
	}
	sub.Publish(prefix+"/cmd/sync", nil)
	d.settle()
	if s := d.status(); s.LastResult != "ok" {
		t.Errorf("daemon after malformed input: %+v", s)
	}

	// After a broker restart the state is published again.
	mosq.Stop()
	mosq.Start()
	late := testenv.Subscribe(t, mosq.URL, prefix+"/#")
	testenv.Eventually(t, 30*time.Second, "state not republished after the broker restart", func() bool {
		return lastState(t, late, prefix+"/agents/alpha/state").Health == "healthy" && lastState(t, late, prefix+"/agents/beta/state").Name == "beta"
	})
}

func startedAfter(rfc string, t time.Time) bool {
	ts, err := time.Parse(time.RFC3339Nano, rfc)
	return err == nil && ts.After(t)
}

// Without --mqtt the daemon runs its own broker: anyone reads, only the
// users of --mqtt-users-file send commands and jobs, a restart of a busy
// agent needs --force, and a packet over --mqtt-max-packet drops its
// sender, not labsync.
func TestEmbeddedBroker(t *testing.T) {
	tf := newFakeTestflinger(t)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"users": "# lab members\nalice:wonderland\n"})
	g := mqttLab(t, tf.URL)
	// gamma takes an hour-long job at once.
	g.repo.Commit("busy gamma", map[string]string{
		"sut/gamma.conf":     strings.Replace(agentConfFor("gamma"), "polling_interval: 60", "polling_interval: 1", 1),
		"sut/gamma.lab.yaml": "command: [labsync-agent, run, --sut, '{name}', --status-interval, 200ms, --, testflinger-agent, -c, '{conf}']\nenv: {STANDIN_JOB_EVERY: \"1\", STANDIN_JOB_DURATION: 1h}\n",
	})
	addr := freeAddr(t)
	d := startDaemon(t, append(g.args, "--mqtt-listen", addr, "--mqtt-users-file", filepath.Join(dir, "users"), "--mqtt-max-packet", "64k", "--submit-poll", "100ms")...)
	g.waitRunning(t, 60*time.Second, "alpha", "beta", "gamma")
	d.settle()
	url, prefix := "tcp://"+addr, "lab/"+g.name
	sub := testenv.Subscribe(t, url, prefix+"/#") // anonymous: reading is allowed
	testenv.Eventually(t, 10*time.Second, "retained state not served by the embedded broker", func() bool {
		return lastState(t, sub, prefix+"/agents/alpha/state").Health == "healthy"
	})
	alice := testenv.SubscribeWith(t, url, "+/submit_status", testenv.ClientOptions{Username: "alice", Password: "wonderland"})
	event := func(substr string) bool {
		for _, m := range sub.Messages() {
			if m.Topic == prefix+"/events" && strings.Contains(m.Payload, substr) {
				return true
			}
		}
		return false
	}
	started := func(name string) string {
		info, err := g.rt.API().ContainerInspect(context.Background(), g.containers(t)[name].ID)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.StartedAt
	}

	// An anonymous restart is refused by the broker: labsync never sees
	// it. alice's unknown command afterwards shows that everything before
	// it was handled.
	alphaStarted := started("alpha")
	anon := testenv.Subscribe(t, url, "unused")
	anon.PublishAsync(prefix+"/agents/alpha/cmd", []byte("restart"))
	anon.PublishAsync("alpha/submit", []byte("echo anonymous"))
	testenv.Eventually(t, 10*time.Second, "the anonymous publisher was not dropped", func() bool { return anon.Disconnects() > 0 })
	alice.Publish(prefix+"/agents/alpha/cmd", []byte("explode"))
	testenv.Eventually(t, 10*time.Second, "alice's command not handled", func() bool { return event("explode") })
	if event("restarted") || started("alpha") != alphaStarted || len(tf.received()) != 0 {
		t.Fatal("an anonymous publish was acted on")
	}

	// alice restarts an idle agent; a busy one only with --force.
	alice.Publish(prefix+"/agents/alpha/cmd", []byte("restart"))
	testenv.Eventually(t, 30*time.Second, "alice's restart not done", func() bool { return event("restarted " + g.name + "-alpha on request") })
	if started("alpha") == alphaStarted {
		t.Error("alpha was not restarted")
	}
	gammaID := g.containers(t)["gamma"].ID
	testenv.Eventually(t, 30*time.Second, "gamma never took its job", func() bool {
		a, _ := g.rt.AgentActivity(context.Background(), gammaID)
		return a.Busy && a.JobID != ""
	})
	activity, _ := g.rt.AgentActivity(context.Background(), gammaID)
	gammaStarted := started("gamma")
	alice.Publish(prefix+"/agents/gamma/cmd", []byte("restart"))
	testenv.Eventually(t, 30*time.Second, "the refusal to restart busy gamma was not published", func() bool {
		return event(`restart refused: agent gamma is running job ` + activity.JobID)
	})
	if started("gamma") != gammaStarted {
		t.Fatal("busy gamma was restarted without --force")
	}
	alice.Publish(prefix+"/agents/gamma/cmd", []byte("restart --force"))
	testenv.Eventually(t, 30*time.Second, "forced restart not done", func() bool { return event("restarted " + g.name + "-gamma on request (forced)") })

	// A packet over 64 KiB drops alice's raw connection; labsync goes on
	// taking alice's submissions.
	raw, code := testenv.DialRaw(t, addr, testenv.ClientOptions{Username: "alice", Password: "wonderland"})
	if code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	_ = raw.Publish("alpha/submit", []byte(strings.Repeat("x", 65<<10)))
	if !raw.Closed(10 * time.Second) {
		t.Fatal("a packet over --mqtt-max-packet was taken")
	}
	alice.Publish("alpha/submit", []byte("echo after"))
	testenv.Eventually(t, 10*time.Second, "submission after the big packet not taken", func() bool { return len(tf.received()) == 1 })
	if td, _ := tf.received()[0]["test_data"].(map[string]any); td["test_cmds"] != "echo after" {
		t.Errorf("job = %v", tf.received()[0])
	}
}

func TestMQTTFlags(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  uint32
		err   bool
	}{
		{"1m", 1 << 20, false},
		{"1048576", 1 << 20, false},
		{"64k", 64 << 10, false},
		{"4k", 4 << 10, false},
		{"1k", 0, true},
		{"1g", 0, true},
		{"lots", 0, true},
	} {
		var m mqttFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		m.register(fs)
		if m.maxPacket != 1<<20 {
			t.Fatalf("default --mqtt-max-packet %d", m.maxPacket)
		}
		err := fs.Parse([]string{"--mqtt-max-packet", tc.value})
		if (err != nil) != tc.err || (!tc.err && m.maxPacket != tc.want) {
			t.Errorf("--mqtt-max-packet %s: %d, %v", tc.value, m.maxPacket, err)
		}
	}
	m := mqttFlags{broker: "tcp://127.0.0.1:1", usersFile: "users"}
	var ue usageError
	if _, err := m.start(context.Background(), t.TempDir(), nil); !errors.As(err, &ue) {
		t.Errorf("--mqtt-users-file with --mqtt: %v, want a usage error", err)
	}
	m = mqttFlags{listen: "127.0.0.1:0", usersFile: filepath.Join(t.TempDir(), "missing")}
	if _, err := m.start(context.Background(), t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "mqtt users file") {
		t.Errorf("missing users file: %v", err)
	}
}
