package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Mosquitto is a real Mosquitto broker on a loopback port of its own.
type Mosquitto struct {
	t    testing.TB
	URL  string
	port int
	conf string
	cmd  *exec.Cmd
}

// StartMosquitto starts a broker for the test; it is stopped at cleanup.
func StartMosquitto(t testing.TB) *Mosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if CI() {
			t.Fatal("mosquitto required under CI=true (scripts/test-setup.sh installs it)")
		}
		t.Skip("no mosquitto")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	WriteFiles(t, dir, map[string]string{"mosquitto.conf": fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port)})
	m := &Mosquitto{t: t, URL: fmt.Sprintf("tcp://127.0.0.1:%d", port), port: port, conf: conf}
	_ = bin
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Start starts (or restarts) the broker and waits until it accepts
// connections.
func (m *Mosquitto) Start() {
	m.t.Helper()
	bin, _ := exec.LookPath("mosquitto")
	if bin == "" {
		bin = "/usr/sbin/mosquitto"
	}
	m.cmd = exec.Command(bin, "-c", m.conf)
	var out SyncBuffer
	m.cmd.Stdout, m.cmd.Stderr = &out, &out
	defer func() {
		if m.t.Failed() {
			m.t.Logf("mosquitto output:\n%s", out.String())
		}
	}()
	if err := m.cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	Eventually(m.t, 10*time.Second, "mosquitto did not listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// Stop stops the broker; retained messages are lost (no persistence).
func (m *Mosquitto) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
	m.cmd = nil
}

// Subscriber records the messages of the topics it subscribed to.
type Subscriber struct {
	client mqtt.Client
	mu     sync.Mutex
	msgs   []Message
	lost   atomic.Int32
}

// Message is one received message.
type Message struct {
	Topic    string
	Payload  string
	Retained bool
	At       time.Time
}

// ClientOptions are a test client's credentials and will.
type ClientOptions struct {
	Username, Password string
	// WillTopic, when set, is the client's last will (payload "gone").
	WillTopic string
}

// Subscribe connects an anonymous test client to url and subscribes to
// topic.
func Subscribe(t testing.TB, url, topic string) *Subscriber {
	t.Helper()
	return SubscribeWith(t, url, topic, ClientOptions{})
}

// SubscribeWith connects a test client with o to url and subscribes to
// topic. The client reconnects when the broker drops it (Disconnects
// counts how often).
func SubscribeWith(t testing.TB, url, topic string, o ClientOptions) *Subscriber {
	t.Helper()
	s := &Subscriber{}
	handler := func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, Message{Topic: m.Topic(), Payload: string(m.Payload()), Retained: m.Retained(), At: time.Now()})
		s.mu.Unlock()
	}
	var connected atomic.Bool
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(Name(t)).SetCleanSession(true).SetAutoReconnect(true).
		SetUsername(o.Username).SetPassword(o.Password).
		SetConnectionLostHandler(func(mqtt.Client, error) { s.lost.Add(1) }).
		SetOnConnectHandler(func(c mqtt.Client) {
			if connected.Load() { // renew after a reconnect; the first is below
				c.Subscribe(topic, 1, handler)
			}
		})
	if o.WillTopic != "" {
		opts.SetWill(o.WillTopic, "gone", 1, false)
	}
	s.client = mqtt.NewClient(opts)
	if tok := s.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect test subscriber to %s: %v", url, tok.Error())
	}
	if tok := s.client.Subscribe(topic, 1, handler); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	connected.Store(true)
	t.Cleanup(func() { s.client.Disconnect(100) })
	return s
}

// Disconnects is how often the broker dropped the client.
func (s *Subscriber) Disconnects() int { return int(s.lost.Load()) }

// RawMQTT is a bare MQTT 3.1.1 connection, for what clients never do on
// their own: packets over the broker's limit, and connections dropped
// without a DISCONNECT (so the broker sends the will).
type RawMQTT struct {
	net.Conn
}

// DialRaw connects to addr (host:port) and sends CONNECT with o; it
// returns the connection and the CONNACK return code (0: accepted).
func DialRaw(t testing.TB, addr string, o ClientOptions) (*RawMQTT, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	flags := byte(0x02) // clean session
	payload := str(Name(t))
	if o.WillTopic != "" {
		flags |= 0x04 | 0x08 // will, QoS 1
		payload = append(append(payload, str(o.WillTopic)...), str("gone")...)
	}
	if o.Username != "" {
		flags |= 0x80
		payload = append(payload, str(o.Username)...)
	}
	if o.Password != "" {
		flags |= 0x40
		payload = append(payload, str(o.Password)...)
	}
	body := append(append(str("MQTT"), 4, flags, 0, 60), payload...)
	r := &RawMQTT{Conn: c}
	if err := r.WritePacket(0x10, body); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return r, ack[3]
}

// WritePacket sends one packet: its first byte, remaining length and body.
func (r *RawMQTT) WritePacket(first byte, body []byte) error {
	hdr := []byte{first}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		hdr = append(hdr, b)
		if n == 0 {
			break
		}
	}
	_, err := r.Write(append(hdr, body...))
	return err
}

// Publish sends a QoS 0 PUBLISH of payload to topic.
func (r *RawMQTT) Publish(topic string, payload []byte) error {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	return r.WritePacket(0x30, append(body, payload...))
}

// Closed reports whether the broker closed the connection within timeout
// (anything it sends before is skipped).
func (r *RawMQTT) Closed(timeout time.Duration) bool {
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, r.Conn)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// Messages returns what was received so far.
func (s *Subscriber) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Last returns the latest message on topic.
func (s *Subscriber) Last(topic string) (Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.msgs) - 1; i >= 0; i-- {
		if s.msgs[i].Topic == topic {
			return s.msgs[i], true
		}
	}
	return Message{}, false
}

// Publish sends a message with the subscriber's connection.
func (s *Subscriber) Publish(topic string, payload []byte) {
	s.client.Publish(topic, 1, false, payload).WaitTimeout(5 * time.Second)
}

// PublishAsync sends a QoS 1 message and returns at once with its token:
// a broker that refuses it may drop the connection instead of
// acknowledging it.
func (s *Subscriber) PublishAsync(topic string, payload []byte) mqtt.Token {
	return s.client.Publish(topic, 1, false, payload)
}

// PublishRetained sends a retained message with the subscriber's connection.
func (s *Subscriber) PublishRetained(topic string, payload []byte) {
	s.client.Publish(topic, 1, true, payload).WaitTimeout(5 * time.Second)
}

// StartMosquittoTLS starts a broker that speaks TLS only, with a CA and a
// server certificate made for the test; it returns the broker and the CA
// file to trust.
func StartMosquittoTLS(t testing.TB) (*Mosquitto, string) {
	t.Helper()
	m := StartMosquitto(t)
	m.Stop()
	dir := t.TempDir()
	ca, cert, key := makeCerts(t)
	WriteFiles(t, dir, map[string]string{"ca.pem": ca, "server.pem": cert, "server.key": key,
		"mosquitto.conf": fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\ncafile %s\ncertfile %s\nkeyfile %s\n",
			m.port, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))})
	// Mosquitto started as root drops to its own user: it must be able
	// to read the test's files.
	for _, p := range []string{filepath.Dir(dir), dir} {
		_ = os.Chmod(p, 0o755)
	}
	m.conf = filepath.Join(dir, "mosquitto.conf")
	m.URL = fmt.Sprintf("ssl://127.0.0.1:%d", m.port)
	m.Start()
	return m, filepath.Join(dir, "ca.pem")
}

func makeCerts(t testing.TB) (caPEM, certPEM, keyPEM string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "labsync test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	enc := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	return enc("CERTIFICATE", caDER), enc("CERTIFICATE", srvDER), enc("EC PRIVATE KEY", keyDER)
}

// StartMosquittoAuth starts a broker that accepts only user with password.
func StartMosquittoAuth(t testing.TB, user, password string) *Mosquitto {
	t.Helper()
	return startMosquittoUsers(t, map[string]string{user: password}, "allow_anonymous false\n", nil)
}

// StartMosquittoACL starts a broker that lets anonymous clients in, with
// users (name → password, in a mosquitto_passwd file) and the ACL file acl.
func StartMosquittoACL(t testing.TB, users map[string]string, acl string) *Mosquitto {
	t.Helper()
	return startMosquittoUsers(t, users, "allow_anonymous true\nacl_file {dir}/acl\n", map[string]string{"acl": acl})
}

func startMosquittoUsers(t testing.TB, users map[string]string, conf string, files map[string]string) *Mosquitto {
	t.Helper()
	m := StartMosquitto(t)
	m.Stop()
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	create := "-c"
	for user, password := range users {
		args := []string{"-b", pw, user, password}
		if create != "" {
			args = append([]string{create}, args...)
			create = ""
		}
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			if CI() {
				t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
			}
			t.Skipf("mosquitto_passwd: %v", err)
		}
	}
	WriteFiles(t, dir, files)
	WriteFiles(t, dir, map[string]string{"mosquitto.conf": fmt.Sprintf("listener %d 127.0.0.1\npassword_file %s\npersistence false\n%s", m.port, pw, strings.ReplaceAll(conf, "{dir}", dir))})
	// Mosquitto started as root drops to its own user: it must be able
	// to read the test's files.
	for _, p := range []string{filepath.Dir(dir), dir, pw, filepath.Join(dir, "acl")} {
		_ = os.Chmod(p, 0o755)
	}
	m.conf = filepath.Join(dir, "mosquitto.conf")
	m.Start()
	return m
}
