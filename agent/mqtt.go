package agent

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sort"
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

// publisher publishes the topics labs already watch. Nothing that calls it
// ever waits for the broker: retained topics keep only their latest value
// and one goroutine sends them; other messages are dropped while the
// sender is busy or the broker is away.
type publisher struct {
	sut    string
	client mqtt.Client
	log    *slog.Logger
	wake   chan struct{}
	pulse  chan string // non-retained payloads for <sut>/agent
	done   chan struct{}

	mu       sync.Mutex
	retained map[string]retainedMsg // topic → latest value
	dirty    map[string]bool        // topics not sent since they changed
}

type retainedMsg struct {
	payload []byte
	qos     byte
}

func newPublisher(sut string, o MQTTOptions, log *slog.Logger) *publisher {
	p := &publisher{sut: sut, log: log, wake: make(chan struct{}, 1), pulse: make(chan string, 1), done: make(chan struct{}),
		retained: map[string]retainedMsg{}, dirty: map[string]bool{}}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	opts := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID("labsync-agent-"+sut+"-"+hex.EncodeToString(suffix[:])).
		SetUsername(o.Username).SetPassword(o.Password).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		// A broker that stops reading must not hold a publish for long:
		// the write fails and the connection is dropped and retried.
		SetWriteTimeout(5*time.Second).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(5*time.Second).
		SetMaxReconnectInterval(time.Minute).
		SetCleanSession(true).
		SetWill(sut+"/agent", "offline", 1, true).
		SetOnConnectHandler(func(c mqtt.Client) {
			log.Info("mqtt connected", "broker", o.Broker)
			p.mu.Lock()
			for t := range p.retained {
				p.dirty[t] = true
			}
			p.mu.Unlock()
			p.beat("online")
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Warn("mqtt connection lost", "err", err) })
	p.client = mqtt.NewClient(opts)
	p.client.Connect() // retries in the background
	go p.sender()
	return p
}

// sender is the only goroutine that talks to the broker.
func (p *publisher) sender() {
	for {
		select {
		case <-p.done:
			return
		case msg := <-p.pulse:
			if p.client.IsConnectionOpen() {
				p.client.Publish(p.sut+"/agent", 1, false, msg).WaitTimeout(5 * time.Second)
			}
			p.flush()
		case <-p.wake:
			p.flush()
		}
	}
}

// flush sends every retained topic changed since it was last sent.
func (p *publisher) flush() {
	if !p.client.IsConnectionOpen() {
		return
	}
	p.mu.Lock()
	topics := make([]string, 0, len(p.dirty))
	for t := range p.dirty {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	msgs := make([]retainedMsg, len(topics))
	for i, t := range topics {
		msgs[i] = p.retained[t]
		delete(p.dirty, t)
	}
	p.mu.Unlock()
	for i, t := range topics {
		p.client.Publish(t, msgs[i].qos, true, msgs[i].payload).WaitTimeout(5 * time.Second)
	}
}

// beat queues "online" or "ok" on <sut>/agent, dropping it if one is
// already waiting.
func (p *publisher) beat(msg string) {
	if p == nil {
		return
	}
	select {
	case p.pulse <- msg:
	default:
	}
}

// retain records the latest value of a retained topic; the sender
// publishes it.
func (p *publisher) retain(topic string, payload []byte, qos byte) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.retained[topic] = retainedMsg{payload: payload, qos: qos}
	p.dirty[topic] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) close() {
	if p == nil {
		return
	}
	close(p.done)
	// A clean stop says offline (the will is only for a lost connection).
	if p.client.IsConnectionOpen() {
		p.client.Publish(p.sut+"/agent", 1, true, "offline").WaitTimeout(2 * time.Second)
	}
	p.client.Disconnect(250)
}
