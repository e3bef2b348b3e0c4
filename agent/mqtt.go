package agent

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// MQTTOptions configure the agent's MQTT publisher.
type MQTTOptions struct {
	// Broker is tcp://host:1883 (or ssl://, ws://). Empty disables MQTT.
	Broker   string
	Username string
	Password string
}

// publisher publishes the topics labs already watch. It never queues:
// while the broker is unreachable messages are dropped, and the latest
// retained values are published again on reconnect.
type publisher struct {
	sut    string
	client mqtt.Client
	log    *slog.Logger

	mu       sync.Mutex
	retained map[string]retainedMsg // topic → latest value
}

type retainedMsg struct {
	payload []byte
	qos     byte
}

func newPublisher(sut string, o MQTTOptions, log *slog.Logger) *publisher {
	p := &publisher{sut: sut, log: log, retained: map[string]retainedMsg{}}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	opts := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID("labsync-agent-"+sut+"-"+hex.EncodeToString(suffix[:])).
		SetUsername(o.Username).SetPassword(o.Password).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(5*time.Second).
		SetMaxReconnectInterval(time.Minute).
		SetCleanSession(true).
		SetWill(sut+"/agent", "offline", 1, true).
		SetOnConnectHandler(func(c mqtt.Client) {
			log.Info("mqtt connected", "broker", o.Broker)
			p.send(sut+"/agent", []byte("online"), 1, false)
			p.mu.Lock()
			msgs := make(map[string]retainedMsg, len(p.retained))
			for t, m := range p.retained {
				msgs[t] = m
			}
			p.mu.Unlock()
			for t, m := range msgs {
				p.send(t, m.payload, m.qos, true)
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Warn("mqtt connection lost", "err", err) })
	p.client = mqtt.NewClient(opts)
	p.client.Connect() // retries in the background
	return p
}

// send publishes if the connection is open, and drops the message if not.
func (p *publisher) send(topic string, payload []byte, qos byte, retain bool) {
	if p == nil || !p.client.IsConnectionOpen() {
		return
	}
	p.client.Publish(topic, qos, retain, payload)
}

// retain publishes a retained value and remembers it for reconnects.
func (p *publisher) retain(topic string, payload []byte, qos byte) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.retained[topic] = retainedMsg{payload: payload, qos: qos}
	p.mu.Unlock()
	p.send(topic, payload, qos, true)
}

func (p *publisher) close() {
	if p == nil {
		return
	}
	// A clean stop says offline (the will is only for a lost connection).
	if p.client.IsConnectionOpen() {
		p.client.Publish(p.sut+"/agent", 1, true, "offline").WaitTimeout(2 * time.Second)
	}
	p.client.Disconnect(250)
}
