package lab_test

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
)

// A stack with an MQTT broker: labsync reports to it (its published port),
// and every agent's labsync-agent reaches it by service name on the lab
// network, unless lab.yaml says otherwise.
func TestStackBrokerIsTheDefault(t *testing.T) {
	compose := "services:\n  mosquitto:\n    image: eclipse-mosquitto:2\n    ports: [\"1884:1883\"]\n    networks: [lab]\n" +
		"  jenkins:\n    image: jenkins\n    ports: [\"9631:8080\"]\n    networks: [lab]\nnetworks:\n  lab: {}\n"
	fsys := fstest.MapFS{
		"sut/alpha.conf":      {Data: []byte(confAlpha)},
		"docker-compose.yaml": {Data: []byte(compose)},
	}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	warned := false
	for _, d := range l.Diagnostics {
		warned = warned || (d.Severity == lab.SeverityWarning && strings.Contains(d.Message, "9631") && strings.Contains(d.Message, "--listen"))
	}
	if !warned {
		t.Errorf("no warning that jenkins takes labsync serve's default port:\n%s", l.Diagnostics)
	}
	d := lab.Compile(l, lab.CompileOptions{})
	if d.Broker == nil || d.Broker.Service != "mosquitto" || d.Broker.URL() != "tcp://127.0.0.1:1884" {
		t.Fatalf("broker = %+v", d.Broker)
	}
	for _, c := range d.Containers {
		if c.Name == "alpha" && c.Env["LABSYNC_AGENT_MQTT"] != "tcp://mosquitto:1883" {
			t.Errorf("alpha's LABSYNC_AGENT_MQTT = %q", c.Env["LABSYNC_AGENT_MQTT"])
		}
	}

	// lab.yaml's own setting wins; a stack without a broker has none.
	fsys["lab.yaml"] = &fstest.MapFile{Data: []byte("agents:\n  env: {LABSYNC_AGENT_MQTT: \"tcp://mqtt.lab:1883\"}\n")}
	l, _ = lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	for _, c := range lab.Compile(l, lab.CompileOptions{}).Containers {
		if c.Name == "alpha" && c.Env["LABSYNC_AGENT_MQTT"] != "tcp://mqtt.lab:1883" {
			t.Errorf("lab.yaml's broker replaced: %q", c.Env["LABSYNC_AGENT_MQTT"])
		}
	}
	if d := lab.Compile(mustLoad(t, fstest.MapFS{"sut/alpha.conf": {Data: []byte(confAlpha)}}), lab.CompileOptions{}); d.Broker != nil {
		t.Errorf("a lab without a stack has broker %+v", d.Broker)
	}
}

func mustLoad(t *testing.T, fsys fstest.MapFS) *lab.Lab {
	t.Helper()
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}
