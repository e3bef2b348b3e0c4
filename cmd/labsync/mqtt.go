package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/mqttbus"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// mqttFlags configure labsync serve's MQTT side.
type mqttFlags struct {
	broker, username, passwordFile string
	caFile, certFile, keyFile      string
	clientID, listen               string
	usersFile                      string
	maxPacket                      uint32
	submitPoll                     time.Duration
}

func (m *mqttFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.broker, "mqtt", "", "MQTT broker (tcp://host:1883, ssl://host:8883); empty: the stack's own broker when it has one (a Mosquitto, or a service on port 1883, on the port it publishes), else the embedded broker on --mqtt-listen")
	fs.StringVar(&m.username, "mqtt-username", "", "MQTT user name")
	fs.StringVar(&m.passwordFile, "mqtt-password-file", "", "file with the MQTT password (or LABSYNC_MQTT_PASSWORD)")
	fs.StringVar(&m.caFile, "mqtt-ca-file", "", "CA certificate to verify an ssl:// broker")
	fs.StringVar(&m.certFile, "mqtt-cert-file", "", "client certificate for the broker")
	fs.StringVar(&m.keyFile, "mqtt-key-file", "", "key of --mqtt-cert-file")
	fs.StringVar(&m.clientID, "mqtt-client-id", "", "MQTT client id (default labsync-<lab>-<host>-<random>: unique per lab and replica)")
	fs.StringVar(&m.listen, "mqtt-listen", "127.0.0.1:1883", "address of the embedded broker, started when --mqtt is empty and the stack has no broker (anyone may read; only --mqtt-users-file users may send commands and jobs); empty disables MQTT")
	fs.StringVar(&m.usersFile, "mqtt-users-file", "", "users of the embedded broker, one user:password a line (plain, or a mosquitto_passwd $7$/$6$ hash): they may publish commands and job submissions; everyone else only reads")
	m.maxPacket = mqttbus.DefaultMaxPacketSize
	fs.Func("mqtt-max-packet", "largest MQTT packet the embedded broker takes, in bytes or with a unit (512k, 1m; default 1m); a client sending a bigger one is disconnected", func(v string) error {
		n, err := lab.ParseByteSize(v)
		if err != nil {
			return err
		}
		if n < minMaxPacket || n > maxMaxPacket {
			return fmt.Errorf("%s is out of range: give 4k to 256m", v)
		}
		m.maxPacket = uint32(n)
		return nil
	})
	fs.DurationVar(&m.submitPoll, "submit-poll", 10*time.Second, "how often the state of a job submitted over MQTT is read")
}

// Bounds of --mqtt-max-packet: labsync's own status messages must fit,
// and MQTT cannot say more than 256 MiB.
const (
	minMaxPacket = 4 << 10
	maxMaxPacket = 256<<20 - 1
)

// mqttSide is the broker, bus and bridge of a running daemon. The bus is
// connected once the lab's name and topic prefix are known (after the
// first valid revision).
type mqttSide struct {
	flags  *mqttFlags
	log    *slog.Logger
	broker *mqttbus.Broker
	url    string
	// embedded is set when no --mqtt is given and --mqtt-listen is:
	// labsync reports to the stack's own broker when the lab has one,
	// else it starts its embedded broker, at the first status.
	embedded bool
	users    mqttbus.Users
	// agentDir holds the embedded broker's agents' socket, which agent
	// containers get while that broker runs.
	agentDir string

	ctx context.Context
	// chooseMu guards the choice of broker (url, broker, embedded); it is
	// taken inside mu, never around network calls of the bus.
	chooseMu sync.Mutex
	mu       sync.Mutex
	pubMu    sync.Mutex // one snapshot published at a time
	bus      *mqttbus.Bus
	bridge   *mqttbus.Bridge
	prefix   string
}

func (m *mqttFlags) start(ctx context.Context, dataDir string, log *slog.Logger) (*mqttSide, error) {
	side := &mqttSide{flags: m, log: log, url: m.broker, ctx: ctx}
	if m.broker != "" && m.usersFile != "" {
		return nil, usageError{"--mqtt-users-file is for the embedded broker; with --mqtt, give the users to that broker"}
	}
	if m.broker == "" && m.listen != "" {
		side.embedded = true
		side.agentDir = filepath.Join(dataDir, "mqtt")
		if m.usersFile != "" {
			var err error
			if side.users, err = mqttbus.LoadUsers(m.usersFile); err != nil {
				return nil, err
			}
		}
	}
	return side, nil
}

// agentSocketDir is the folder of the embedded broker's agents' socket
// for a pass about to apply d, or "" when agents cannot report there
// (another broker, or none). It chooses the broker first, so that the
// first pass's agents get the socket only when the embedded broker runs.
func (s *mqttSide) agentSocketDir(d *lab.Desired) string {
	s.chooseMu.Lock()
	defer s.chooseMu.Unlock()
	if !s.chooseBroker(d) || s.broker == nil {
		return ""
	}
	return s.agentDir
}

// chooseBroker picks the broker at the first valid revision of a lab:
// --mqtt; else the stack's own broker, on the port it publishes; else the
// embedded broker, started now. Callers hold s.chooseMu. It reports false
// when there is none.
func (s *mqttSide) chooseBroker(d *lab.Desired) bool {
	if s.url != "" || !s.embedded {
		return s.url != ""
	}
	if u := d.Broker.URL(); u != "" {
		s.url = u
		s.log.Info("MQTT: reporting to the stack's own broker, as its agents do", "service", d.Broker.Service, "broker", u)
		return true
	}
	if d.Broker != nil {
		s.log.Warn("the stack's MQTT broker publishes no port on the host, so labsync cannot reach it; starting the embedded broker (publish its port 1883, or give --mqtt)", "service", d.Broker.Service)
	}
	m := s.flags
	b, err := mqttbus.StartBroker(mqttbus.BrokerOptions{Addr: m.listen, MaxPacketSize: m.maxPacket, Users: s.users, Logger: s.log,
		AgentSocket: filepath.Join(s.agentDir, runtime.AgentMQTTSocket)})
	if err != nil {
		// A lab host often runs its own Mosquitto on 1883: say how to use
		// it, and go on without MQTT rather than not at all.
		s.log.Error("embedded MQTT broker not started; MQTT status is off (give --mqtt tcp://host:1883 to use a running broker, or another --mqtt-listen)", "err", err)
		s.embedded = false
		return false
	}
	s.broker, s.url = b, b.URL()
	s.log.Info("embedded MQTT broker started", "listen", b.Addr(), "users", len(s.users), "max_packet", m.maxPacket)
	return true
}

// attach makes the controller's status and events flow to MQTT.
func (s *mqttSide) attach(ctrl *reconciler.Controller) {
	if s.url == "" && !s.embedded {
		return
	}
	ctrl.AddSinks(func(st reconciler.LabStatus) { s.publish(ctrl, st) }, func(e reconciler.Event) {
		s.mu.Lock()
		b := s.bridge
		s.mu.Unlock()
		if b != nil {
			b.Event(e)
		}
	})
}

func (s *mqttSide) publish(ctrl *reconciler.Controller, st reconciler.LabStatus) {
	if st.Desired == nil {
		return
	}
	s.mu.Lock()
	s.chooseMu.Lock()
	chosen := s.chooseBroker(st.Desired)
	s.chooseMu.Unlock()
	if s.bus == nil && !chosen {
		s.mu.Unlock()
		return
	}
	if s.bus == nil {
		username := s.flags.username
		password, err := readSecret(s.flags.passwordFile, "LABSYNC_MQTT_PASSWORD")
		if err != nil {
			s.mu.Unlock()
			s.log.Error("mqtt password", "err", err)
			return
		}
		if s.broker != nil {
			// The embedded broker: labsync's own client, with full rights;
			// users may send commands under the lab's prefix from now on.
			username, password = s.broker.Credentials()
			s.broker.SetPrefix(st.Desired.MQTTPrefix)
		}
		bus, err := mqttbus.Connect(mqttbus.Options{
			Broker: s.url, Username: username, Password: password,
			CAFile: s.flags.caFile, CertFile: s.flags.certFile, KeyFile: s.flags.keyFile,
			ClientID: s.flags.clientID, Prefix: st.Desired.MQTTPrefix, Lab: st.Lab, Logger: s.log,
		})
		if err != nil {
			s.mu.Unlock()
			s.log.Error("mqtt", "err", err)
			return
		}
		s.bus, s.prefix = bus, st.Desired.MQTTPrefix
		s.bridge = mqttbus.NewBridge(mqttbus.BridgeOptions{Bus: bus, Controller: ctrl, SubmitPoll: s.flags.submitPoll, Logger: s.log, Context: s.ctx})
	} else if st.Desired.MQTTPrefix != s.prefix {
		s.log.Warn("mqtt.prefix changed; restart labsync serve to use it", "in_use", s.prefix, "new", st.Desired.MQTTPrefix)
	}
	b := s.bridge
	s.mu.Unlock()
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	b.Publish(st)
}

func (s *mqttSide) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bus != nil {
		s.bus.Close()
	}
	if s.broker != nil {
		_ = s.broker.Close()
	}
}
