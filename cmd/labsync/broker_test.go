package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/runtime"
)

// A stack with its own MQTT broker: with no --mqtt, labsync reports to it
// on the port it publishes, and the agents' labsync-agent report to it by
// service name, so <sut>/agent appears there as under the old stack.
func TestServeReportsToTheStacksBroker(t *testing.T) {
	g := newGitLab(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	image := testenv.StandinImage(t, g.rt)
	g.repo.Commit("a broker in the stack", map[string]string{
		"docker-compose.yaml": fmt.Sprintf("services:\n  mqtt:\n    image: %s\n    command: [/usr/sbin/mosquitto]\n    ports: [\"127.0.0.1:%s:1883\"]\n", image, port),
	})
	d := startDaemon(t, g.args...)
	g.waitRunning(t, 60*time.Second, "alpha", "mqtt")
	d.settle()
	if !strings.Contains(d.out.String(), "reporting to the stack's own broker") || strings.Contains(d.out.String(), "embedded MQTT broker started") {
		t.Fatalf("labsync did not choose the stack's broker:\n%s", d.out.String())
	}
	sub := testenv.Subscribe(t, "tcp://127.0.0.1:"+port, "#")
	testenv.Eventually(t, 60*time.Second, "no status and no agent heartbeat on the stack's broker", func() bool {
		_, status := sub.Last("labsync/" + g.name + "/status")
		_, agent := sub.Last("alpha/agent")
		return status && agent
	})
}

// A stack without a broker: labsync starts its embedded broker, and the
// agents reach it through its agents' socket, which their containers get
// mounted.
func TestServeAgentsReachTheEmbeddedBroker(t *testing.T) {
	g := newGitLab(t)
	addr := freeAddr(t)
	// Unix socket paths are short: the data folder goes under /tmp.
	data, err := os.MkdirTemp("", "lsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	d := startDaemon(t, append(withoutFlag(g.args, "--data-dir"), "--data-dir", data, "--mqtt-listen", addr)...)
	g.waitRunning(t, 60*time.Second, "alpha")
	d.settle()
	sub := testenv.Subscribe(t, "tcp://"+addr, "#")
	testenv.Eventually(t, 60*time.Second, "no agent heartbeat on the embedded broker", func() bool {
		_, agent := sub.Last("alpha/agent")
		_, status := sub.Last("labsync/" + g.name + "/status")
		return agent && status
	})
}

// When the embedded broker cannot start (a lab host's Mosquitto has its
// port), the first pass's agents are made without the agents' socket:
// it is chosen before they are created, and there is none.
func TestServeAgentsGetNoSocketWithoutTheEmbeddedBroker(t *testing.T) {
	g := newGitLab(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	data, err := os.MkdirTemp("", "lsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	d := startDaemon(t, append(withoutFlag(g.args, "--data-dir"), "--data-dir", data, "--mqtt-listen", taken.Addr().String())...)
	g.waitRunning(t, 60*time.Second, "alpha")
	d.settle()
	if !strings.Contains(d.out.String(), "embedded MQTT broker not started") {
		t.Fatalf("the embedded broker started on a taken port:\n%s", d.out.String())
	}
	info, err := g.rt.API().ContainerInspect(context.Background(), g.containers(t)["alpha"].ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range info.Config.Env {
		if strings.HasPrefix(e, "LABSYNC_AGENT_MQTT=") {
			t.Errorf("agent made with %s, but no broker runs", e)
		}
	}
	for _, b := range info.HostConfig.Binds {
		if strings.HasSuffix(b, ":"+runtime.AgentMQTTMount) {
			t.Errorf("agent made with the socket folder mounted (%s), but no broker runs", b)
		}
	}
}
