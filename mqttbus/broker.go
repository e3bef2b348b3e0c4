package mqttbus

import (
	"fmt"
	"log/slog"
	"net"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Broker is the embedded MQTT broker labsync serve starts when no broker is
// configured, so status works on a fresh machine.
type Broker struct {
	srv  *mochi.Server
	addr string
}

// StartBroker listens on addr (host:port; port 0 picks one) and serves MQTT
// to anyone who reaches it: put it on a trusted network, or use a real
// broker with ACLs.
func StartBroker(addr string, log *slog.Logger) (*Broker, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	real := ln.Addr().String()
	ln.Close()
	srv := mochi.New(&mochi.Options{InlineClient: false, Logger: log.With("component", "broker")})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: real})); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return &Broker{srv: srv, addr: real}, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// URL is the broker's address for clients on this host.
func (b *Broker) URL() string {
	host, port, _ := net.SplitHostPort(b.addr)
	if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port)
}

// Close stops the broker.
func (b *Broker) Close() error { return b.srv.Close() }
