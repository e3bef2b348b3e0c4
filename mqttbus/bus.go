// Package mqttbus is labsync on MQTT: a paho client that publishes the lab's
// retained status tree and events, keeps only the latest value of each
// retained topic (republished after every reconnect, never queued), listens
// for commands and job submissions, and an embedded broker for labs that
// run none (anyone reads; only labsync and the users of a users file
// publish). It decides nothing: it renders and forwards.
package mqttbus

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/labsync/labsync/internal/redact"
)

// Options configure a Bus.
type Options struct {
	// Broker is tcp://host:1883, ssl://host:8883, ws:// or wss://.
	Broker   string
	Username string
	Password string
	// CAFile verifies the broker's certificate; CertFile and KeyFile are a
	// client certificate.
	CAFile, CertFile, KeyFile string
	// ClientID is unique per lab and replica (default:
	// labsync-<lab>-<host>-<random>).
	ClientID string
	// Prefix is the topic prefix (default labsync/<lab>).
	Prefix string
	Lab    string
	Logger *slog.Logger
}

// Bus is a connection to the broker. Publishing never blocks and never
// queues: while the broker is away only the latest retained values are
// kept, and they are published again on reconnect.
type Bus struct {
	opts   Options
	client mqtt.Client
	log    *slog.Logger

	wake     chan struct{}
	queue    chan message // non-retained messages; dropped when full
	done     chan struct{}
	handlers chan struct{} // bounds the handlers running at once

	mu       sync.Mutex
	retained map[string][]byte
	dirty    map[string]bool // retained topics not sent since they changed
	subs     map[string]subscription
}

type message struct {
	topic   string
	payload []byte
	qos     byte
}

type subscription struct {
	qos     byte
	handler func(topic string, payload []byte)
	// retained: also deliver retained messages (the broker's stored
	// last value, sent again at every connect).
	retained bool
}

// Connect starts connecting to the broker in the background and returns at
// once; the bus reconnects by itself.
func Connect(o Options) (*Bus, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Prefix == "" {
		o.Prefix = "labsync/" + o.Lab
	}
	if o.ClientID == "" {
		host, _ := os.Hostname()
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.ClientID = fmt.Sprintf("labsync-%s-%s-%s", o.Lab, host, hex.EncodeToString(b[:]))
	}
	b := &Bus{opts: o, log: o.Logger.With("broker", redact.String(o.Broker)), retained: map[string][]byte{}, dirty: map[string]bool{}, subs: map[string]subscription{},
		wake: make(chan struct{}, 1), queue: make(chan message, 256), done: make(chan struct{}), handlers: make(chan struct{}, maxHandlers)}
	co := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(2*time.Second).SetMaxReconnectInterval(30*time.Second).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetWill(o.Prefix+"/online", "offline", 1, true).
		SetOnConnectHandler(b.onConnect).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { b.log.Warn("mqtt connection lost", "err", err) })
	if o.CAFile != "" || o.CertFile != "" {
		tc, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		co.SetTLSConfig(tc)
	}
	b.client = mqtt.NewClient(co)
	b.client.Connect() // retried in the background
	go b.sender()
	return b, nil
}

// sender is the only goroutine that publishes, so no caller ever waits
// for the broker.
func (b *Bus) sender() {
	for {
		select {
		case <-b.done:
			return
		case m := <-b.queue:
			if b.client.IsConnectionOpen() {
				b.client.Publish(m.topic, m.qos, false, m.payload).WaitTimeout(5 * time.Second)
			}
		case <-b.wake:
		}
		b.flush()
	}
}

// flush publishes every retained topic changed since it was last sent.
func (b *Bus) flush() {
	if !b.client.IsConnectionOpen() {
		return
	}
	b.mu.Lock()
	topics := make([]string, 0, len(b.dirty))
	for t := range b.dirty {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	payloads := make([][]byte, len(topics))
	for i, t := range topics {
		payloads[i] = b.retained[t] // nil for a forgotten topic: clears it
		delete(b.dirty, t)
	}
	b.mu.Unlock()
	for i, t := range topics {
		tok := b.client.Publish(t, 1, true, payloads[i])
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil || !b.client.IsConnectionOpen() {
			// Not sent: mark what is left dirty again, for the next
			// connection.
			b.mu.Lock()
			for _, rest := range topics[i:] {
				b.dirty[rest] = true
			}
			b.mu.Unlock()
			return
		}
	}
}

func (b *Bus) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func tlsConfig(o Options) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("mqtt CA file: no certificate in it")
		}
		tc.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// maxHandlers bounds the message handlers running at once.
const maxHandlers = 16

// Prefix returns the topic prefix of the lab.
func (b *Bus) Prefix() string { return b.opts.Prefix }

// Connected reports whether the connection is open now.
func (b *Bus) Connected() bool { return b.client.IsConnectionOpen() }

func (b *Bus) onConnect(c mqtt.Client) {
	b.log.Info("mqtt connected")
	b.mu.Lock()
	b.retained[b.opts.Prefix+"/online"] = []byte("online")
	for t := range b.retained {
		b.dirty[t] = true // the broker may have lost them: send all again
	}
	subs := make(map[string]subscription, len(b.subs))
	for t, s := range b.subs {
		subs[t] = s
	}
	b.mu.Unlock()
	for t, s := range subs {
		b.subscribe(t, s)
	}
	b.kick()
}

// Retain publishes payload as the retained value of topic (QoS 1), unless
// it is already the value; the latest value is published again after each
// reconnect. It reports whether anything changed.
func (b *Bus) Retain(topic string, payload []byte) bool {
	b.mu.Lock()
	if old, ok := b.retained[topic]; ok && string(old) == string(payload) {
		b.mu.Unlock()
		return false
	}
	b.retained[topic] = payload
	b.dirty[topic] = true
	b.mu.Unlock()
	b.kick()
	return true
}

// Forget clears a retained topic: an empty retained message removes it
// from the broker.
func (b *Bus) Forget(topic string) {
	b.mu.Lock()
	_, ok := b.retained[topic]
	delete(b.retained, topic)
	if ok {
		b.dirty[topic] = true
	}
	b.mu.Unlock()
	b.kick()
}

// Publish sends a message that is not retained. It is dropped while the
// broker is away, or when 256 messages already wait.
func (b *Bus) Publish(topic string, payload []byte, qos byte) {
	if !b.client.IsConnectionOpen() {
		return
	}
	select {
	case b.queue <- message{topic: topic, payload: payload, qos: qos}:
	default:
		b.log.Debug("mqtt message dropped: the sender is behind", "topic", topic)
	}
}

// Subscribe registers handler for topic (wildcards allowed); the
// subscription is renewed after each reconnect. Retained messages are not
// delivered: a command or a job left retained on the broker would
// otherwise run again at every connect.
func (b *Bus) Subscribe(topic string, qos byte, handler func(topic string, payload []byte)) {
	s := subscription{qos: qos, handler: handler}
	b.mu.Lock()
	b.subs[topic] = s
	b.mu.Unlock()
	if b.client.IsConnectionOpen() {
		b.subscribe(topic, s)
	}
}

// Unsubscribe drops a subscription.
func (b *Bus) Unsubscribe(topic string) {
	b.mu.Lock()
	_, ok := b.subs[topic]
	delete(b.subs, topic)
	b.mu.Unlock()
	if ok && b.client.IsConnectionOpen() {
		b.client.Unsubscribe(topic)
	}
}

func (b *Bus) subscribe(topic string, s subscription) {
	b.client.Subscribe(topic, s.qos, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() && !s.retained {
			b.log.Warn("retained message ignored: commands and jobs must not be retained", "topic", clip(m.Topic()))
			return
		}
		// Handlers run on goroutines of their own, at most maxHandlers at
		// once, so a slow one never stalls paho; past that, messages are
		// dropped with a log line.
		select {
		case b.handlers <- struct{}{}:
			go func() {
				defer func() { <-b.handlers }()
				s.handler(m.Topic(), m.Payload())
			}()
		default:
			b.log.Warn("mqtt message dropped: too many being handled", "topic", clip(m.Topic()))
		}
	})
}

// Close says offline and disconnects.
func (b *Bus) Close() {
	close(b.done)
	if b.client.IsConnectionOpen() {
		b.client.Publish(b.opts.Prefix+"/online", 1, true, "offline").WaitTimeout(2 * time.Second)
	}
	b.client.Disconnect(500)
}
