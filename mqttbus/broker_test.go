package mqttbus_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/mqttbus"
)

// usersFile lists alice (plain text), bob (mosquitto_passwd's $7$) and
// carol ($6$, Mosquitto 1.6's hash).
const usersFile = `# lab members
alice:wonderland

bob:$7$101$i89hXOM0NGZOIq9k$EKJDbI+JOFg12HltUY8DLLRtrYselpl68ta+aLe0qEzv3RLJ91UDeJQqXHdUpQAsxMxSMhk3PSW8buxObcThJQ==
carol:$6$BGfDPcqOXulalFqc$L/P5x5TPeVEN/Grxt4XJsv0vOvx+tukKqqDqTJAapZIR4rZY8v7Avxq1XB04+Hb+U+cM6EOQJ06auQDi+swYLA==
`

func startBroker(t *testing.T, o mqttbus.BrokerOptions) *mqttbus.Broker {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Users == nil {
		users, err := mqttbus.ParseUsers(strings.NewReader(usersFile), "users")
		if err != nil {
			t.Fatal(err)
		}
		o.Users = users
	}
	b, err := mqttbus.StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// internal connects as labsync's own client.
func internal(t *testing.T, b *mqttbus.Broker) *testenv.Subscriber {
	user, pw := b.Credentials()
	return testenv.SubscribeWith(t, b.URL(), "internal/unused", testenv.ClientOptions{Username: user, Password: pw})
}

// checkPublish publishes payload to topic as pub and reports whether it
// reached reader. A refused publish either drops the publisher (the
// embedded broker, MQTT 3.1.1) or is acknowledged and dropped
// (Mosquitto); once either happened, a marker sent by a client that may
// publish there proves that nothing else is on its way.
func checkPublish(t *testing.T, reader, pub, marker *testenv.Subscriber, topic, payload string) bool {
	t.Helper()
	lost := pub.Disconnects()
	tok := pub.PublishAsync(topic, []byte(payload))
	testenv.Eventually(t, 10*time.Second, "publish neither acknowledged nor refused", func() bool {
		select {
		case <-tok.Done():
			return true
		default:
			return pub.Disconnects() > lost
		}
	})
	mark := payload + "-marker"
	marker.PublishAsync(topic, []byte(mark))
	seen := func(p string) bool {
		for _, m := range reader.Messages() {
			if m.Topic == topic && m.Payload == p {
				return true
			}
		}
		return false
	}
	testenv.Eventually(t, 10*time.Second, "marker on "+topic+" never arrived", func() bool { return seen(mark) })
	return seen(payload)
}

// aclCase is one publish and whether the ACL lets it through. User
// "labsync" is labsync's own client.
type aclCase struct {
	user, password, topic string
	ok                    bool
}

// aclCases hold for the embedded broker and for Mosquitto with the ACL of
// docs/mqtt.md alike; prefix is the lab's topic prefix.
func aclCases(prefix string) []aclCase {
	return []aclCase{
		{"", "", prefix + "/cmd/sync", false},
		{"", "", prefix + "/agents/dut1/cmd", false},
		{"", "", "dut1/submit", false},
		{"", "", prefix + "/status", false},
		{"alice", "wonderland", prefix + "/cmd/sync", true},
		{"alice", "wonderland", prefix + "/agents/dut1/cmd", true},
		{"alice", "wonderland", "dut1/submit", true},
		{"alice", "wonderland", prefix + "/status", false},
		{"alice", "wonderland", prefix + "/agents/dut1/state", false},
		{"alice", "wonderland", prefix + "/events", false},
		{"alice", "wonderland", "other/lab/cmd/sync", false},
		{"alice", "wonderland", "dut1/submit_status", false},
		{"alice", "wonderland", "a/dut1/submit", false},
		{"labsync", "", prefix + "/status", true},
		{"labsync", "", "dut1/submit_status", true},
	}
}

func runACLCases(t *testing.T, url string, cases []aclCase, self testenv.ClientOptions, marker *testenv.Subscriber) {
	reader := testenv.Subscribe(t, url, "#") // anonymous: reading is allowed
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s %s", or(tc.user, "anonymous"), tc.topic), func(t *testing.T) {
			o := testenv.ClientOptions{Username: tc.user, Password: tc.password}
			if tc.user == "labsync" {
				o = self
			}
			pub := testenv.SubscribeWith(t, url, "unused", o)
			if got := checkPublish(t, reader, pub, marker, tc.topic, fmt.Sprintf("case-%d", i)); got != tc.ok {
				t.Errorf("published = %v, want %v", got, tc.ok)
			}
		})
	}
}

// The embedded broker's ACL: anyone reads, listed users publish commands
// and submissions, labsync itself anything, anonymous clients nothing.
func TestBrokerACL(t *testing.T) {
	b := startBroker(t, mqttbus.BrokerOptions{})
	user, pw := b.Credentials()
	self := internal(t, b)

	// Before the first pass the prefix is unknown: commands are refused.
	reader := testenv.Subscribe(t, b.URL(), "#")
	alice := testenv.SubscribeWith(t, b.URL(), "unused", testenv.ClientOptions{Username: "alice", Password: "wonderland"})
	if checkPublish(t, reader, alice, self, "lab/x/cmd/sync", "early") {
		t.Error("a command was taken before the prefix was known")
	}
	b.SetPrefix("lab/x")
	cases := append(aclCases("lab/x"),
		aclCase{"mallory", "anything", "dut1/submit", false}, // not listed: anonymous
		aclCase{"bob", "open sesame", "dut2/submit", true},
		aclCase{"carol", "c4rol pw", "lab/x/cmd/sync", true},
	)
	runACLCases(t, b.URL(), cases, testenv.ClientOptions{Username: user, Password: pw}, self)
}

// The Mosquitto ACL that docs/mqtt.md shows gives the embedded broker's
// rule.
func TestMosquittoACLOfTheDocs(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "mqtt.md"))
	if err != nil {
		t.Fatal(err)
	}
	conf, acl := codeBlock(t, string(doc), "# /etc/mosquitto/conf.d/labsync.conf"), codeBlock(t, string(doc), "# /etc/mosquitto/acl")
	for _, want := range []string{"allow_anonymous true", "password_file /etc/mosquitto/passwd", "acl_file /etc/mosquitto/acl"} {
		if !strings.Contains(conf, want+"\n") {
			t.Errorf("the mosquitto.conf of the docs lacks %q", want)
		}
	}
	// A user who may publish anywhere sends the markers.
	mosq := testenv.StartMosquittoACL(t, map[string]string{"labsync": "l4bsync", "alice": "wonderland", "agent": "ag3nt", "marker": "m"},
		acl+"\nuser marker\ntopic readwrite #\n")
	marker := testenv.SubscribeWith(t, mosq.URL, "unused", testenv.ClientOptions{Username: "marker", Password: "m"})
	cases := append(aclCases("labsync/lab-host-1"),
		aclCase{"agent", "ag3nt", "dut1/agent", true},
		aclCase{"agent", "ag3nt", "dut1/submit", false},
	)
	runACLCases(t, mosq.URL, cases, testenv.ClientOptions{Username: "labsync", Password: "l4bsync"}, marker)
	if _, code := testenv.DialRaw(t, strings.TrimPrefix(mosq.URL, "tcp://"), testenv.ClientOptions{Username: "mallory", Password: "x"}); code == 0 {
		t.Error("Mosquitto let in a user that is not in its password file; fix docs/mqtt.md")
	}
}

// codeBlock returns the fenced block of doc whose first line is first.
func codeBlock(t *testing.T, doc, first string) string {
	t.Helper()
	for block := range strings.SplitSeq(doc, "```") {
		block = strings.TrimPrefix(block, "\n")
		if strings.HasPrefix(block, first+"\n") || strings.HasPrefix(block, first+":") {
			return block
		}
	}
	t.Fatalf("no code block starting with %q in docs/mqtt.md", first)
	return ""
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Listed users and labsync's own user must give their password; anyone
// else connects read-only.
func TestBrokerAuthentication(t *testing.T) {
	b := startBroker(t, mqttbus.BrokerOptions{})
	addr := strings.TrimPrefix(b.URL(), "tcp://")
	user, pw := b.Credentials()
	if user == "" || len(pw) < 32 {
		t.Fatalf("internal credentials %q / %d characters", user, len(pw))
	}
	if b2 := startBroker(t, mqttbus.BrokerOptions{}); func() bool { u2, p2 := b2.Credentials(); return u2 == user || p2 == pw }() {
		t.Error("two brokers made the same internal credentials")
	}
	for _, tc := range []struct {
		name    string
		o       testenv.ClientOptions
		refused bool
	}{
		{"no credentials", testenv.ClientOptions{}, false},
		{"unknown user", testenv.ClientOptions{Username: "mallory", Password: "x"}, false},
		{"listed user", testenv.ClientOptions{Username: "alice", Password: "wonderland"}, false},
		{"hashed password", testenv.ClientOptions{Username: "bob", Password: "open sesame"}, false},
		{"wrong password", testenv.ClientOptions{Username: "alice", Password: "nope"}, true},
		{"listed user without password", testenv.ClientOptions{Username: "bob"}, true},
		{"internal user, wrong password", testenv.ClientOptions{Username: user, Password: "guess"}, true},
		{"internal user", testenv.ClientOptions{Username: user, Password: pw}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// MQTT 3.1.1 return codes: 0 accepted, 4 bad user name or
			// password, 5 not authorised (mochi's choice).
			if _, code := testenv.DialRaw(t, addr, tc.o); (code != 0) != tc.refused {
				t.Errorf("CONNACK return code %d, want refused = %v", code, tc.refused)
			}
		})
	}
}

// A will is a publish: one on a topic the client may not publish to is
// dropped.
func TestBrokerWills(t *testing.T) {
	b := startBroker(t, mqttbus.BrokerOptions{})
	b.SetPrefix("lab/x")
	addr := strings.TrimPrefix(b.URL(), "tcp://")
	reader := testenv.Subscribe(t, b.URL(), "#")
	self := internal(t, b)
	gone := func(topic string) bool {
		for _, m := range reader.Messages() {
			if m.Topic == topic && m.Payload == "gone" {
				return true
			}
		}
		return false
	}
	anon, _ := testenv.DialRaw(t, addr, testenv.ClientOptions{WillTopic: "lab/x/cmd/sync"})
	anon.Close()
	alice, _ := testenv.DialRaw(t, addr, testenv.ClientOptions{Username: "alice", Password: "wonderland", WillTopic: "dut1/submit"})
	alice.Close()
	testenv.Eventually(t, 10*time.Second, "a listed user's will on dut1/submit was not sent", func() bool { return gone("dut1/submit") })
	self.PublishAsync("lab/x/cmd/sync", []byte("marker"))
	testenv.Eventually(t, 10*time.Second, "marker not received", func() bool {
		m, ok := reader.Last("lab/x/cmd/sync")
		return ok && m.Payload == "marker"
	})
	if gone("lab/x/cmd/sync") {
		t.Error("an anonymous client's will was published on a command topic")
	}
}

// A packet over the limit drops its sender; the broker goes on serving.
func TestBrokerPacketLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit uint32
		big   int
	}{
		{"default 1 MiB", 0, 1<<20 + 1},
		{"64 KiB", 64 << 10, 64<<10 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBroker(t, mqttbus.BrokerOptions{MaxPacketSize: tc.limit})
			addr := strings.TrimPrefix(b.URL(), "tcp://")
			reader := testenv.Subscribe(t, b.URL(), "#")
			raw, code := testenv.DialRaw(t, addr, testenv.ClientOptions{Username: "alice", Password: "wonderland"})
			if code != 0 {
				t.Fatalf("CONNACK %d", code)
			}
			if err := raw.Publish("dut1/submit", []byte("small")); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 10*time.Second, "small publish not delivered", func() bool {
				m, ok := reader.Last("dut1/submit")
				return ok && m.Payload == "small"
			})
			_ = raw.Publish("dut1/submit", []byte(strings.Repeat("x", tc.big)))
			if !raw.Closed(10 * time.Second) {
				t.Fatal("the broker kept a client that sent a packet over the limit")
			}
			// Still serving: a new client publishes and is read.
			again, code := testenv.DialRaw(t, addr, testenv.ClientOptions{Username: "alice", Password: "wonderland"})
			if code != 0 {
				t.Fatalf("CONNACK %d after the big packet", code)
			}
			if err := again.Publish("dut1/submit", []byte("after")); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 10*time.Second, "broker stopped serving after a big packet", func() bool {
				m, ok := reader.Last("dut1/submit")
				return ok && m.Payload == "after"
			})
			for _, m := range reader.Messages() {
				if len(m.Payload) > 1000 {
					t.Errorf("a %d-byte message was delivered", len(m.Payload))
				}
			}
		})
	}
}

func TestParseUsers(t *testing.T) {
	users, err := mqttbus.ParseUsers(strings.NewReader(usersFile), "users")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, password string
		ok             bool
	}{
		{"alice", "wonderland", true},
		{"alice", "wonderlan", false},
		{"alice", "", false},
		{"bob", "open sesame", true},
		{"bob", "open sesamE", false},
		{"carol", "c4rol pw", true},
		{"carol", "c4rol", false},
		{"mallory", "", false},
		{"# lab members", "", false},
	} {
		if got := users.Check(tc.user, []byte(tc.password)); got != tc.ok {
			t.Errorf("Check(%q, %q) = %v, want %v", tc.user, tc.password, got, tc.ok)
		}
	}
	for _, tc := range []struct{ name, file, err string }{
		{"no colon", "alice\n", "users:1: want user:password"},
		{"empty user", ":pw\n", "users:1: empty user name"},
		{"empty password", "# x\nalice:\n", "users:2: user \"alice\" has an empty password"},
		{"twice", "alice:a\nalice:b\n", "users:2: user \"alice\" is listed twice"},
		{"bad $7$", "bob:$7$101$salt\n", "users:1: user \"bob\": a $7$ hash is"},
		{"huge iterations", "bob:$7$99999999$aaaa$" + strings.Repeat("A", 88) + "\n", "iterations"},
		{"bad base64", "bob:$6$!!$xx\n", "salt is not base64"},
		{"short hash", "bob:$6$aaaa$aaaa\n", "hash is not 64 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mqttbus.ParseUsers(strings.NewReader(tc.file), "users")
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

// What mosquitto_passwd writes, labsync reads: both of its hashes.
func TestUsersFileFromMosquittoPasswd(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		if testenv.CI() {
			t.Fatal("mosquitto_passwd required under CI=true")
		}
		t.Skip("no mosquitto_passwd")
	}
	file := filepath.Join(t.TempDir(), "passwd")
	for i, args := range [][]string{
		{"-c", "-b", file, "dora", "pbkdf2 pass:word"},
		{"-H", "sha512", "-b", file, "eve", "sha512-pass"},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd %d: %v\n%s", i, err, out)
		}
	}
	data, _ := os.ReadFile(file)
	users, err := mqttbus.LoadUsers(file)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if !users.Check("dora", []byte("pbkdf2 pass:word")) || !users.Check("eve", []byte("sha512-pass")) || users.Check("dora", []byte("sha512-pass")) {
		t.Errorf("passwords of\n%s\nnot checked right", data)
	}
}

// Agents reach the embedded broker through its agents' socket, which a
// bind mount gives their containers: there they may publish their own
// topics and nothing else.
func TestBrokerAgentSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agents.sock")
	b := startBroker(t, mqttbus.BrokerOptions{AgentSocket: sock})
	b.SetPrefix("lab/x")
	self := internal(t, b)
	reader := testenv.Subscribe(t, b.URL(), "#")
	for _, tc := range []struct {
		topic string
		ok    bool
	}{
		{"dut1/agent", true}, {"dut1/agent/state", true}, {"dut1/output", true}, {"dut1/last_job", true},
		{"dut1/submit", false}, {"lab/x/cmd/sync", false}, {"lab/x/status", false},
	} {
		// A client a case: a refused publish may cost the client its
		// connection.
		agent := testenv.SubscribeWith(t, "unix://"+sock, "unused", testenv.ClientOptions{WillTopic: "dut1/agent"})
		if got := checkPublish(t, reader, agent, self, tc.topic, "from-the-socket"); got != tc.ok {
			t.Errorf("a client of the agents' socket publishing on %s: taken %v, want %v", tc.topic, got, tc.ok)
		}
	}
	// On the TCP listener the same client is anonymous: read only.
	anon := testenv.Subscribe(t, b.URL(), "unused")
	if checkPublish(t, reader, anon, self, "dut2/agent", "anonymous") {
		t.Error("an anonymous TCP client published an agent topic")
	}
}

// The agents' socket is usable by any container user whatever labsync's
// umask, and a path too long for a unix socket is refused with what to do.
func TestBrokerAgentSocketModeAndLength(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mqtt")
	func() {
		defer syscall.Umask(syscall.Umask(0o077))
		startBroker(t, mqttbus.BrokerOptions{AgentSocket: filepath.Join(dir, "agents.sock")})
	}()
	for path, want := range map[string]os.FileMode{dir: 0o755, filepath.Join(dir, "agents.sock"): 0o666} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}

	long := filepath.Join(t.TempDir(), strings.Repeat("d", 120), "agents.sock")
	_, err := mqttbus.StartBroker(mqttbus.BrokerOptions{Addr: "127.0.0.1:0", AgentSocket: long})
	if err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("StartBroker with a %d-byte socket path: %v, want an error naming --data-dir", len(long), err)
	}
}
