package mqttbus_test

import (
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/mqttbus"
)

func TestRetainPublishesChanges(t *testing.T) {
	mosq := testenv.StartMosquitto(t)
	bus, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, Lab: "l1"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	testenv.Eventually(t, 10*time.Second, "bus not connected", bus.Connected)
	sub := testenv.Subscribe(t, mosq.URL, "labsync/l1/#")
	for i, v := range []string{"a", "b", "b", "c"} {
		if changed := bus.Retain("labsync/l1/x", []byte(v)); changed != (i != 2) {
			t.Errorf("Retain(%s) changed = %v", v, changed)
		}
	}
	testenv.Eventually(t, 10*time.Second, "changes not received", func() bool {
		m, ok := sub.Last("labsync/l1/x")
		return ok && m.Payload == "c"
	})
	n := 0
	for _, m := range sub.Messages() {
		if m.Topic == "labsync/l1/x" {
			n++
		}
	}
	// Values set faster than they are sent are coalesced: only the latest
	// counts, and nothing is sent twice for one value.
	if n < 1 || n > 3 {
		t.Errorf("%d messages on x, want 1 to 3", n)
	}
}

// A command or job left retained on the broker is not run again at each
// connect: handlers never see retained messages.
func TestRetainedMessagesAreNotHandled(t *testing.T) {
	mosq := testenv.StartMosquitto(t)
	pub := testenv.Subscribe(t, mosq.URL, "unused")
	pub.PublishRetained("dut1/submit", []byte("echo left over"))
	bus, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, Lab: "l2"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	testenv.Eventually(t, 10*time.Second, "bus not connected", bus.Connected)
	got := make(chan string, 4)
	bus.Subscribe("+/submit", 1, func(_ string, p []byte) { got <- string(p) })
	testenv.Eventually(t, 10*time.Second, "live message not handled", func() bool {
		pub.Publish("dut1/submit", []byte("echo live"))
		select {
		case m := <-got:
			if m != "echo live" {
				t.Fatalf("handled %q", m)
			}
			return true
		default:
			return false
		}
	})
}

// A TLS broker: the bus verifies it with the CA it is given.
func TestTLSBroker(t *testing.T) {
	mosq, ca := testenv.StartMosquittoTLS(t)
	// First a bus that trusts another CA: it must never connect.
	untrusted, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, Lab: "tls2", CAFile: writeOtherCA(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	bus, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, CAFile: ca, Lab: "tls"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	testenv.Eventually(t, 10*time.Second, "no TLS connection", bus.Connected)
	if untrusted.Connected() {
		t.Error("connected to a broker whose certificate it cannot verify")
	}
}

func writeOtherCA(t *testing.T) string {
	_, ca := testenv.StartMosquittoTLS(t) // another CA, of another broker
	return ca
}

// A broker with a password file: the right credentials connect, wrong
// ones never do.
func TestBrokerWithPassword(t *testing.T) {
	mosq := testenv.StartMosquittoAuth(t, "labsync", "s3cret")
	wrong, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, Username: "labsync", Password: "nope", Lab: "pw2"})
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	bus, err := mqttbus.Connect(mqttbus.Options{Broker: mosq.URL, Username: "labsync", Password: "s3cret", Lab: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	testenv.Eventually(t, 10*time.Second, "not connected with the right password", bus.Connected)
	if wrong.Connected() {
		t.Error("connected with a wrong password")
	}
}
