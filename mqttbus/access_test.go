package mqttbus

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestTopicMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"+/submit", "dut1/submit", true},
		{"+/submit", "a/dut1/submit", false},
		{"+/submit", "/submit", true}, // an empty level is a level
		{"+/submit", "$SYS/submit", false},
		{"lab/x/cmd/#", "lab/x/cmd/sync", true},
		{"lab/x/cmd/#", "lab/x/cmd", true},
		{"lab/x/cmd/#", "lab/x/cmd/a/b", true},
		{"lab/x/cmd/#", "lab/x/cmdx", false},
		{"lab/x/agents/+/cmd", "lab/x/agents/dut1/cmd", true},
		{"lab/x/agents/+/cmd", "lab/x/agents/dut1/state", false},
		{"lab/x/agents/+/cmd", "lab/x/agents/a/b/cmd", false},
		{"#", "$SYS/broker", false},
	} {
		if got := topicMatches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("topicMatches(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

// The hook's decisions, client by client, without a network.
func TestAccessHook(t *testing.T) {
	users, err := ParseUsers(strings.NewReader("alice:wonderland\n"), "users")
	if err != nil {
		t.Fatal(err)
	}
	prefix := ""
	h := &accessHook{users: users, internalUser: "labsync-x", internalPassword: []byte("s3cret"), prefix: func() string { return prefix }, log: slog.New(slog.DiscardHandler)}
	connect := func(user, pw, will string) (*mochi.Client, bool) {
		cl := &mochi.Client{}
		cl.Properties.Username = []byte(user)
		if will != "" {
			cl.Properties.Will = mochi.Will{TopicName: will, Flag: 1}
		}
		var pk packets.Packet
		pk.Connect.Username, pk.Connect.Password = []byte(user), []byte(pw)
		return cl, h.OnConnectAuthenticate(cl, pk)
	}
	for _, tc := range []struct {
		name, user, pw string
		ok             bool
	}{
		{"anonymous", "", "", true},
		{"unknown user", "mallory", "x", true},
		{"user", "alice", "wonderland", true},
		{"user, wrong password", "alice", "x", false},
		{"internal", "labsync-x", "s3cret", true},
		{"internal, wrong password", "labsync-x", "s3cre", false},
	} {
		if _, ok := connect(tc.user, tc.pw, ""); ok != tc.ok {
			t.Errorf("%s: connect = %v, want %v", tc.name, ok, tc.ok)
		}
	}
	anon, _ := connect("", "", "")
	alice, _ := connect("alice", "wonderland", "")
	self, _ := connect("labsync-x", "s3cret", "")
	if !h.OnACLCheck(anon, "lab/x/status", false) || h.OnACLCheck(anon, "dut1/submit", true) {
		t.Error("anonymous clients must read and not write")
	}
	if h.OnACLCheck(alice, "lab/x/cmd/sync", true) {
		t.Error("a command was allowed before the prefix was known")
	}
	prefix = "lab/x"
	if !h.OnACLCheck(alice, "lab/x/cmd/sync", true) || h.OnACLCheck(alice, "lab/x/status", true) {
		t.Error("users publish commands, not status")
	}
	if !h.OnACLCheck(self, "lab/x/status", true) {
		t.Error("labsync's client must publish its status")
	}
	if cl, _ := connect("", "", "lab/x/cmd/sync"); cl.Properties.Will.Flag != 0 {
		t.Error("an anonymous will on a command topic was kept")
	}
	if cl, _ := connect("alice", "wonderland", "dut1/submit"); cl.Properties.Will.Flag == 0 {
		t.Error("a user's will on a submit topic was dropped")
	}
}

// Packets mochi logs lose their payload and password.
func TestQuietPackets(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(quietPackets{slog.NewTextHandler(&buf, nil)}).With("component", "broker")
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "dut1/submit", Payload: []byte("SECRET-PAYLOAD")}
	pk.Connect.Password = []byte("SECRET-PASSWORD")
	log.Warn("error processing packet", "pk", pk, "client", "c1")
	out := buf.String()
	// fmt prints byte slices as numbers: 83 69 67 82 69 84 is "SECRET".
	if strings.Contains(out, "SECRET") || strings.Contains(out, "83 69 67 82 69 84") || !strings.Contains(out, "pk.topic=dut1/submit") || !strings.Contains(out, "pk.bytes=14") || !strings.Contains(out, "client=c1") {
		t.Errorf("log line: %s", out)
	}
}
