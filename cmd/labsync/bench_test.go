package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// BenchmarkNoopPlanLive measures a no-op plan (load, compile, observe,
// plan) against a host that runs every agent of the lab already, and the
// Docker API calls it makes. LABSYNC_BENCH_AGENTS sets the number of agents
// (default 20; make bench uses 500).
func BenchmarkNoopPlanLive(b *testing.B) {
	n := 20
	if v, err := strconv.Atoi(os.Getenv("LABSYNC_BENCH_AGENTS")); err == nil && v > 0 {
		n = v
	}
	rt := testenv.Docker(b)
	image := testenv.StandinImage(b, rt)
	name := testenv.Name(b)
	testenv.CleanupLab(b, rt, name)
	dir := b.TempDir()
	files := map[string]string{
		"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image:\n    name: %[2]s\n  healthcheck: {disable: true}\n  memory: 32m\n  update:\n    parallelism: 16\n    min_uptime: 100ms\n", name, image),
	}
	for i := 0; i < n; i++ {
		sut := fmt.Sprintf("dut%04d", i)
		files["sut/"+sut+".conf"] = fmt.Sprintf("agent_id: %[1]s\nserver_address: http://tf:8000\njob_queues: [%[1]s]\npolling_interval: 3600\n", sut)
		files["sut/"+sut+"_snappy.yaml"] = fmt.Sprintf("device_ip: 10.%d.%d.%d\n", i/65536, i/256%256, i%256)
	}
	testenv.WriteFiles(b, dir, files)
	start := time.Now()
	if err := run(context.Background(), []string{"apply", "--log-level", "warn", dir}, io.Discard, io.Discard); err != nil {
		b.Fatalf("apply %d agents: %v", n, err)
	}
	b.Logf("applied %d agents in %s", n, time.Since(start).Round(time.Millisecond))

	ctx := context.Background()
	var calls int64
	// b.Loop runs this function once, so the agents are started once.
	for b.Loop() {
		r0, w0 := rt.Calls()
		l, err := lab.Load(os.DirFS(dir), lab.LoadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		obs, err := rt.Observe(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		p := reconciler.Plan(lab.Compile(l, lab.CompileOptions{}), obs, reconciler.PlanOptions{})
		if !p.Empty() {
			b.Fatalf("plan is not empty: %s", p.Summary())
		}
		r1, w1 := rt.Calls()
		if w1 != w0 {
			b.Fatalf("a plan made %d mutating calls", w1-w0)
		}
		calls += r1 - r0
	}
	b.ReportMetric(float64(calls)/float64(b.N), "api-calls/op")
	b.ReportMetric(float64(n), "agents")
}

// BenchmarkWebhookToRunning measures, for each new SUT pushed to the lab
// repository, the time from the signed push webhook to its agent container
// running (the poll is an hour away). It reports the median and the worst.
func BenchmarkWebhookToRunning(b *testing.B) {
	g := newGitLab(b)
	d := startDaemon(b, g.args...)
	g.waitRunning(b, time.Minute, "alpha")
	d.settle()
	var times []time.Duration
	i := 0
	for b.Loop() {
		i++
		name := fmt.Sprintf("new%02d", i)
		g.repo.Commit("add "+name, map[string]string{"sut/" + name + ".conf": agentConfFor(name)})
		start := time.Now()
		if resp := pushHook(b, d.url, g.secret, "refs/heads/main", fmt.Sprintf("bench-%d", i)); resp.StatusCode != http.StatusAccepted {
			b.Fatalf("webhook: %s", resp.Status)
		}
		tick := time.NewTicker(20 * time.Millisecond)
		for c := g.containers(b)[name]; c.State != "running"; c = g.containers(b)[name] {
			if time.Since(start) > time.Minute {
				b.Fatalf("%s not running after a minute", name)
			}
			<-tick.C
		}
		tick.Stop()
		times = append(times, time.Since(start))
		d.settle()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "worst-ms")
	b.Logf("webhook to running, sorted: %v", times)
}

// BenchmarkStateChangeToMQTT measures the time from a container stopped or
// started by hand to the MQTT message with its new state, and reports the
// median.
func BenchmarkStateChangeToMQTT(b *testing.B) {
	mosq := testenv.StartMosquitto(b)
	tf := httptestTF(b)
	g := newGitLab(b, "--mqtt", mosq.URL, "--flap-limit", "0")
	g.repo.Commit("mqtt", map[string]string{"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {disable: true}\n  update: {min_uptime: 200ms}\ntestflinger: {server: %[3]s}\n", g.name, testenv.StandinImage(b, g.rt), tf)})
	d := startDaemon(b, g.args...)
	g.waitRunning(b, time.Minute, "alpha")
	d.settle()
	topic := "labsync/" + g.name + "/agents/alpha/state"
	sub := testenv.Subscribe(b, mosq.URL, topic)
	ctx := context.Background()
	var times []time.Duration
	want := map[bool]string{true: `"state":"running"`, false: `"state":"exited"`}
	running := true
	for b.Loop() {
		id := g.containers(b)["alpha"].ID
		start := time.Now()
		var err error
		if running {
			err = g.rt.StopContainer(ctx, id, time.Second)
		} else {
			err = g.rt.StartContainer(ctx, id)
		}
		if err != nil {
			b.Fatal(err)
		}
		changed := time.Now() // the state has changed when the call returns
		running = !running
		tick := time.NewTicker(5 * time.Millisecond)
		for m, _ := sub.Last(topic); !strings.Contains(m.Payload, want[running]) || m.At.Before(start); m, _ = sub.Last(topic) {
			if time.Since(start) > 30*time.Second {
				b.Fatalf("no %s message", want[running])
			}
			<-tick.C
		}
		tick.Stop()
		m, _ := sub.Last(topic)
		times = append(times, max(m.At.Sub(changed), 0))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
	b.Logf("state change to MQTT, sorted: %v", times)
}

// BenchmarkMQTTMessagesPerPass counts the messages a lab of
// LABSYNC_BENCH_AGENTS agents (default 100) puts on the broker: in the pass
// that creates them, and in a pass that changes nothing.
func BenchmarkMQTTMessagesPerPass(b *testing.B) {
	n := 100
	if v, err := strconv.Atoi(os.Getenv("LABSYNC_BENCH_AGENTS")); err == nil && v > 0 {
		n = v
	}
	mosq := testenv.StartMosquitto(b)
	g := newGitLab(b, "--mqtt", mosq.URL)
	files := map[string]string{
		"lab.yaml":       fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {disable: true}\n  memory: 32m\n  update: {parallelism: 16, min_uptime: 100ms}\n", g.name, testenv.StandinImage(b, g.rt)),
		"sut/alpha.conf": "",
	}
	for i := 0; i < n; i++ {
		files[fmt.Sprintf("sut/dut%03d.conf", i)] = agentConfFor(fmt.Sprintf("dut%03d", i))
	}
	g.repo.Commit("many agents", files)
	sub := testenv.Subscribe(b, mosq.URL, "labsync/"+g.name+"/#")
	d := startDaemon(b, g.args...)
	testenv.Eventually(b, 10*time.Minute, "agents not converged", func() bool {
		s := d.status()
		return !s.Passing && s.LastResult == "ok" && s.Agents == n
	})
	converge := len(sub.Messages())
	for b.Loop() {
		before := len(sub.Messages())
		runs := len(d.runs())
		if code, body := syncAPI(b, d.url, g.apiToken); code != http.StatusAccepted {
			b.Fatalf("sync: %d %s", code, body)
		}
		testenv.Eventually(b, time.Minute, "no-op pass not done", func() bool { return len(d.runs()) > runs && !d.status().Passing })
		// Messages of a pass arrive within moments of its end.
		testenv.Eventually(b, 5*time.Second, "pass event not received", func() bool {
			for _, m := range sub.Messages()[before:] {
				if strings.Contains(m.Payload, `"type":"pass"`) {
					return true
				}
			}
			return false
		})
		b.ReportMetric(float64(len(sub.Messages())-before), "msgs/noop-pass")
	}
	b.ReportMetric(float64(converge), "msgs/converge")
	b.ReportMetric(float64(n), "agents")
}

func httptestTF(b *testing.B) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"state": "waiting", "job_id": ""}`)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
