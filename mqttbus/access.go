package mqttbus

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// accessHook is the embedded broker's authentication and ACL:
//
//   - labsync's own client (a random user and password made at start) may
//     do anything;
//   - users of the users file may read everything and publish commands
//     (<prefix>/cmd/#, <prefix>/agents/+/cmd) and job submissions
//     (+/submit); a listed user with a wrong password is refused;
//   - clients of the agents' socket (labsync-agent in agent containers)
//     may publish the agents' own topics: <sut>/agent, <sut>/agent/state,
//     <sut>/output, <sut>/last_job;
//   - everyone else (no user name, or one that is not listed) may connect
//     and read everything, and publish nothing.
//
// A will the client could not publish itself is dropped at connect.
type accessHook struct {
	mochi.HookBase
	users            Users
	internalUser     string
	internalPassword []byte
	// prefix is the lab's topic prefix, known only after the first pass;
	// until then users may submit jobs but not send commands.
	prefix func() string
	log    *slog.Logger
}

var _ mochi.Hook = (*accessHook)(nil)

func (h *accessHook) ID() string { return "labsync-access" }

func (h *accessHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

// OnConnectAuthenticate checks the password of the internal user and of
// listed users; anyone else connects read-only.
func (h *accessHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	user := pk.Connect.Username
	ok := true
	switch {
	case len(user) > 0 && string(user) == h.internalUser:
		ok = subtle.ConstantTimeCompare(pk.Connect.Password, h.internalPassword) == 1
	case h.users.has(user):
		ok = h.users.Check(string(user), pk.Connect.Password)
	}
	if !ok {
		h.log.Info("mqtt client refused: wrong password", "user", clip(string(user)), "remote", cl.Net.Remote)
		return false
	}
	if w := cl.Properties.Will; w.Flag != 0 && !h.mayPublish(cl, user, w.TopicName) {
		h.log.Info("mqtt client's will dropped: it may not publish there", "user", clip(string(user)), "remote", cl.Net.Remote, "topic", clip(w.TopicName))
		cl.Properties.Will = mochi.Will{}
	}
	return true
}

// OnACLCheck lets everyone read, and publishing only as mayPublish says.
func (h *accessHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if !write {
		return true
	}
	if h.mayPublish(cl, cl.Properties.Username, topic) {
		return true
	}
	// Debug only: refusals must not let anyone flood the log.
	h.log.Debug("mqtt publish refused", "user", clip(string(cl.Properties.Username)), "remote", cl.Net.Remote, "topic", clip(topic))
	return false
}

// mayPublish says whether the client cl, as user, may publish to topic.
func (h *accessHook) mayPublish(cl *mochi.Client, user []byte, topic string) bool {
	switch {
	case len(user) > 0 && string(user) == h.internalUser:
		return true
	case cl.Net.Listener == agentsListener:
		for _, f := range agentTopics {
			if topicMatches(f, topic) {
				return true
			}
		}
		return false
	case !h.users.has(user):
		return false
	}
	filters := []string{"+/submit"}
	if p := h.prefix(); p != "" {
		filters = append(filters, p+"/cmd/#", p+"/agents/+/cmd")
	}
	for _, f := range filters {
		if topicMatches(f, topic) {
			return true
		}
	}
	return false
}

// agentTopics are the topics labsync-agent publishes for its SUT.
var agentTopics = []string{"+/agent", "+/agent/state", "+/output", "+/last_job"}

// topicMatches reports whether an MQTT topic name matches a filter with +
// and # wildcards; as MQTT says, a wildcard at the first level does not
// match a topic starting with $.
func topicMatches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true // also matches the parent level
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

// has reports whether user is listed.
func (u Users) has(user []byte) bool {
	if len(user) == 0 {
		return false
	}
	_, ok := u[string(user)]
	return ok
}

// quietPackets is the broker's log handler: mochi logs whole packets when
// it drops a client (payloads up to the packet limit, passwords of CONNECT
// packets); they are replaced by their type, topic and size.
type quietPackets struct{ slog.Handler }

func (q quietPackets) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if pk, ok := a.Value.Any().(packets.Packet); ok {
			a = slog.Group(a.Key, "type", packets.PacketNames[pk.FixedHeader.Type], "topic", clip(pk.TopicName), "bytes", len(pk.Payload))
		}
		out.AddAttrs(a)
		return true
	})
	return q.Handler.Handle(ctx, out)
}

func (q quietPackets) WithAttrs(as []slog.Attr) slog.Handler {
	return quietPackets{q.Handler.WithAttrs(as)}
}

func (q quietPackets) WithGroup(name string) slog.Handler {
	return quietPackets{q.Handler.WithGroup(name)}
}
