package mqttbus

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// DefaultMaxPacketSize bounds the packets of the embedded broker unless
// BrokerOptions say otherwise.
const DefaultMaxPacketSize = 1 << 20

// BrokerOptions configure the embedded broker.
type BrokerOptions struct {
	// Addr is host:port; port 0 picks one.
	Addr string
	// MaxPacketSize bounds every packet a client sends (default 1 MiB); a
	// client that sends a bigger one is disconnected.
	MaxPacketSize uint32
	// Users may publish commands and job submissions; everyone else may
	// only read.
	Users Users
	// AgentSocket, when set, is a unix socket for the agents' labsync-agent
	// (labsync bind-mounts its folder into agent containers): clients on it
	// may publish the agents' own topics, and nothing else.
	AgentSocket string
	Logger      *slog.Logger
}

// agentsListener is the listener id of the agents' socket.
const agentsListener = "agents"

// Broker is the embedded MQTT broker labsync serve starts when no broker is
// configured, so status works on a fresh machine.
type Broker struct {
	srv              *mochi.Server
	addr             string
	internalUser     string
	internalPassword string
	prefix           atomic.Pointer[string]
}

// StartBroker listens on o.Addr and serves MQTT: everyone may read, only
// o.Users may publish commands and submissions, and labsync's own client
// (Credentials) anything.
func StartBroker(o BrokerOptions) (*Broker, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	real := ln.Addr().String()
	ln.Close()
	b := &Broker{addr: real, internalUser: "labsync-" + rand.Text()[:8], internalPassword: rand.Text() + rand.Text()}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = o.MaxPacketSize
	blog := slog.New(quietPackets{log.Handler()}).With("component", "broker")
	b.srv = mochi.New(&mochi.Options{InlineClient: false, Capabilities: caps, Logger: blog})
	hook := &accessHook{users: o.Users, internalUser: b.internalUser, internalPassword: []byte(b.internalPassword), prefix: b.Prefix, log: blog}
	if err := b.srv.AddHook(hook, nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := b.srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: real})); err != nil {
		_ = b.srv.Close()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if o.AgentSocket != "" {
		if err := listenAgents(b.srv, o.AgentSocket); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("embedded broker: agents' socket %s: %w", o.AgentSocket, err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		_ = b.srv.Close()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return b, nil
}

// maxSocketPath is the longest path of a unix socket on Linux.
const maxSocketPath = 107

// listenAgents adds the agents' socket: a folder any agent container's
// user can enter and a socket any of them can connect to (the ACL, not
// the file mode, says what they may do), whatever labsync's umask.
func listenAgents(srv *mochi.Server, path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("the path is %d bytes, over the %d a unix socket may have: use a shorter --data-dir", len(path), maxSocketPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewUnixSock(listeners.Config{ID: agentsListener, Address: path})); err != nil {
		return err
	}
	return os.Chmod(path, 0o666)
}

// Credentials are the user name and password of labsync's own client,
// made at random when the broker starts: the only client that may publish
// status. Never log them.
func (b *Broker) Credentials() (user, password string) {
	return b.internalUser, b.internalPassword
}

// SetPrefix sets the lab's topic prefix, known after the first pass:
// users may publish commands under it from then on.
func (b *Broker) SetPrefix(prefix string) { b.prefix.Store(&prefix) }

// Prefix is the topic prefix set by SetPrefix, or "".
func (b *Broker) Prefix() string {
	if p := b.prefix.Load(); p != nil {
		return *p
	}
	return ""
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
