package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
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
