// Package testflinger knows Testflinger's own file formats: the
// testflinger-agent configuration, the device-connector configuration and the
// job YAML that testflinger-cli submits. It checks them the way the agent and
// the server would, but reports every problem with its line.
package testflinger

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
)

// kind is the YAML type a key must have.
type kind int

const (
	kString kind = iota
	kInt
	kBool
	kStringList
	kMap
	kStringOrList
)

func (k kind) String() string {
	return [...]string{"a string", "an integer", "true or false", "a list of strings", "a mapping", "a string or a list of strings"}[k]
}

func (k kind) matches(n *yaml.Node) bool {
	switch k {
	case kString:
		// YAML reads `agent_id: 1234` as a number; Testflinger's schema
		// wants a string, but such values are plainly meant as one.
		return yamlcheck.IsScalar(n) && !yamlcheck.IsBool(n)
	case kInt:
		return yamlcheck.IsInt(n)
	case kBool:
		return yamlcheck.IsBool(n)
	case kStringList:
		if !yamlcheck.IsSeq(n) {
			return false
		}
		for _, it := range yamlcheck.Items(n) {
			if !yamlcheck.IsScalar(it) {
				return false
			}
		}
		return true
	case kMap:
		return yamlcheck.IsMap(n)
	case kStringOrList:
		return kString.matches(n) || kStringList.matches(n)
	}
	return false
}

// AgentKeys is the testflinger-agent configuration schema: every key the
// agent accepts and its type. The agent rejects any other key.
var agentKeys = map[string]kind{
	"agent_id":                kString,
	"identifier":              kString,
	"location":                kString,
	"server_address":          kString,
	"job_queues":              kStringList,
	"polling_interval":        kInt,
	"execution_basedir":       kString,
	"logging_basedir":         kString,
	"results_basedir":         kString,
	"logging_level":           kString,
	"logging_quiet":           kBool,
	"setup_command":           kString,
	"provision_command":       kString,
	"firmware_update_command": kString,
	"test_command":            kString,
	"allocate_command":        kString,
	"reserve_command":         kString,
	"cleanup_command":         kString,
	"provision_type":          kString,
	"global_timeout":          kInt,
	"output_timeout":          kInt,
	"advertised_queues":       kMap,
	"advertised_images":       kMap,
	"output_bytes":            kInt,
}

var agentRequired = []string{"agent_id", "server_address", "job_queues"}

var logLevels = []string{"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}

// connectorKeys are the device-connector keys whose type is known. Device
// types add keys of their own, so other keys are only warned about.
var connectorKeys = map[string]kind{
	"device_ip":                kString,
	"agent_name":               kString,
	"node_id":                  kString,
	"node_name":                kString,
	"maas_user":                kString,
	"secure_id":                kString,
	"reboot_script":            kStringList,
	"serial_host":              kString,
	"serial_port":              kInt,
	"env":                      kMap,
	"timeout_min":              kInt,
	"max_reserve_timeout":      kInt,
	"control_host":             kString,
	"control_user":             kString,
	"test_device":              kString,
	"recovery_cmds":            kStringList,
	"control_switch_local_cmd": kString,
	"select_master":            kString,
	"select_test":              kString,
	"test_media":               kString,
}

// jobKeys is the top level of a Testflinger job.
var jobKeys = map[string]kind{
	"job_queue":            kString,
	"tags":                 kStringList,
	"global_timeout":       kInt,
	"output_timeout":       kInt,
	"allocation_timeout":   kInt,
	"provision_data":       kMap,
	"firmware_update_data": kMap,
	"test_data":            kMap,
	"allocate_data":        kMap,
	"reserve_data":         kMap,
	"job_priority":         kInt,
	"exclude_agents":       kStringList,
	"name":                 kString,
	"job_status_webhook":   kString,
}

var testDataKeys = map[string]kind{
	"test_cmds":     kStringOrList,
	"attachments":   kStringOrListOrMaps,
	"test_username": kString,
	"test_password": kString,
	"secrets":       kMap,
}

var reserveDataKeys = map[string]kind{
	"ssh_keys": kStringList,
	"timeout":  kInt,
}

const kStringOrListOrMaps = kind(-1)

func keysOf(m map[string]kind) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkKeys checks the keys of mapping n against schema. Unknown keys are
// errors when strict, warnings otherwise. It returns the values by key.
func checkKeys(n *yaml.Node, prefix string, schema map[string]kind, strict bool) (map[string]*yaml.Node, []yamlcheck.Finding) {
	var fs []yamlcheck.Finding
	vals := map[string]*yaml.Node{}
	known := keysOf(schema)
	for _, p := range yamlcheck.Pairs(n) {
		if prev, dup := vals[p.Key]; dup {
			fs = append(fs, yamlcheck.Errorf(p.KeyN, "key '%s%s' is given twice (first at line %d); keep one", prefix, p.Key, prev.Line))
			continue
		}
		vals[p.Key] = p.Value
		k, ok := schema[p.Key]
		if !ok {
			msg := yamlcheck.UnknownKey(prefix+p.Key, prefixed(prefix, known))
			if strict {
				fs = append(fs, yamlcheck.Errorf(p.KeyN, "%s", msg))
			} else {
				fs = append(fs, yamlcheck.Warnf(p.KeyN, "%s", msg))
			}
			continue
		}
		if k == kStringOrListOrMaps {
			if !yamlcheck.IsSeq(p.Value) && !kString.matches(p.Value) {
				fs = append(fs, yamlcheck.Errorf(p.Value, "'%s%s' must be a list, not %s", prefix, p.Key, yamlcheck.Describe(p.Value)))
			}
			continue
		}
		if !k.matches(p.Value) {
			fs = append(fs, yamlcheck.Errorf(p.Value, "'%s%s' must be %s, not %s", prefix, p.Key, k, yamlcheck.Describe(p.Value)))
		}
	}
	return vals, fs
}

func prefixed(prefix string, keys []string) []string {
	if prefix == "" {
		return keys
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = prefix + k
	}
	return out
}

// AgentConf is what labsync needs to know of a testflinger-agent
// configuration once it has been checked.
type AgentConf struct {
	AgentID       string
	AgentIDLine   int
	ServerAddress string
	JobQueues     []string
	// Keys maps each top-level key to the line it is on, so that changes
	// can be reported key by key.
	Keys map[string]int
}

// CheckAgentConf checks a testflinger-agent configuration document.
func CheckAgentConf(root *yaml.Node) (AgentConf, []yamlcheck.Finding) {
	var conf AgentConf
	if root == nil {
		return conf, []yamlcheck.Finding{{Line: 1, Msg: "the agent configuration is empty; it needs at least agent_id, server_address and job_queues"}}
	}
	if !yamlcheck.IsMap(root) {
		return conf, []yamlcheck.Finding{yamlcheck.Errorf(root, "the agent configuration must be a mapping of keys to values, not %s", yamlcheck.Describe(root))}
	}
	vals, fs := checkKeys(root, "", agentKeys, true)
	conf.Keys = map[string]int{}
	for _, p := range yamlcheck.Pairs(root) {
		conf.Keys[p.Key] = p.KeyN.Line
	}
	for _, k := range agentRequired {
		if _, ok := vals[k]; !ok && !misspelt(vals, k) {
			fs = append(fs, yamlcheck.Errorf(root, "missing required key '%s'", k))
		}
	}
	if n := vals["agent_id"]; n != nil && kString.matches(n) {
		conf.AgentID, conf.AgentIDLine = n.Value, n.Line
		if strings.TrimSpace(n.Value) == "" {
			fs = append(fs, yamlcheck.Errorf(n, "'agent_id' is empty; set it to the SUT name"))
		}
	}
	if n := vals["server_address"]; n != nil && kString.matches(n) {
		conf.ServerAddress = n.Value
		if strings.TrimSpace(n.Value) == "" {
			fs = append(fs, yamlcheck.Errorf(n, "'server_address' is empty; set it to the Testflinger server, e.g. http://testflinger:8000"))
		}
	}
	if n := vals["job_queues"]; n != nil && kStringList.matches(n) {
		for _, it := range yamlcheck.Items(n) {
			conf.JobQueues = append(conf.JobQueues, it.Value)
		}
		if len(conf.JobQueues) == 0 {
			fs = append(fs, yamlcheck.Errorf(n, "'job_queues' is empty; list at least one queue, usually the SUT name"))
		}
	}
	if n := vals["logging_level"]; n != nil && kString.matches(n) && !slices.Contains(logLevels, strings.ToUpper(n.Value)) {
		fs = append(fs, yamlcheck.Errorf(n, "'logging_level' is %q; use one of %s", n.Value, strings.Join(logLevels, ", ")))
	}
	for _, k := range []string{"polling_interval", "global_timeout", "output_timeout", "output_bytes"} {
		if n := vals[k]; n != nil && kInt.matches(n) && strings.HasPrefix(n.Value, "-") {
			fs = append(fs, yamlcheck.Errorf(n, "'%s' is negative; use a positive number", k))
		}
	}
	return conf, fs
}

// ConnectorConf is what labsync needs of a device-connector configuration.
type ConnectorConf struct {
	DeviceIP     string
	DeviceIPLine int
	Keys         map[string]int
}

// CheckConnectorConf checks a device-connector configuration. Types of known
// keys are errors; unknown keys are warnings, since device types differ.
func CheckConnectorConf(root *yaml.Node) (ConnectorConf, []yamlcheck.Finding) {
	var conf ConnectorConf
	if root == nil {
		return conf, []yamlcheck.Finding{{Line: 1, Warning: true, Msg: "the device-connector configuration is empty"}}
	}
	if !yamlcheck.IsMap(root) {
		return conf, []yamlcheck.Finding{yamlcheck.Errorf(root, "the device-connector configuration must be a mapping, not %s", yamlcheck.Describe(root))}
	}
	vals, fs := checkKeys(root, "", connectorKeys, false)
	conf.Keys = map[string]int{}
	for _, p := range yamlcheck.Pairs(root) {
		conf.Keys[p.Key] = p.KeyN.Line
	}
	if n := vals["device_ip"]; n != nil && kString.matches(n) {
		conf.DeviceIP, conf.DeviceIPLine = n.Value, n.Line
		if net.ParseIP(n.Value) == nil && (looksNumeric(n.Value) || !validHostname(n.Value)) {
			fs = append(fs, yamlcheck.Errorf(n, "'device_ip' is %q, which is neither an IP address nor a host name", n.Value))
		}
	}
	// The environment given to test commands may name the device again;
	// when it disagrees, one of the two is a copy-paste slip.
	for _, p := range yamlcheck.Pairs(vals["env"]) {
		if p.Key == "DEVICE_IP" && yamlcheck.IsScalar(p.Value) && conf.DeviceIP != "" && !sameDevice(p.Value.Value, conf.DeviceIP) {
			fs = append(fs, yamlcheck.Warnf(p.KeyN, "env DEVICE_IP is %s but device_ip is %s; test commands would reach another device: make them agree", p.Value.Value, conf.DeviceIP))
		}
	}
	return conf, fs
}

// sameDevice compares device addresses: IP addresses in canonical form,
// host names without case.
func sameDevice(a, b string) bool {
	ia, ib := net.ParseIP(strings.TrimSpace(a)), net.ParseIP(strings.TrimSpace(b))
	if ia != nil && ib != nil {
		return ia.Equal(ib)
	}
	return strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
}

// CheckJob checks a Testflinger job document (what testflinger-cli submit
// posts). A job template may leave test_data.test_cmds out: the submit
// bridge fills it in.
func CheckJob(root *yaml.Node) []yamlcheck.Finding {
	if root == nil {
		return []yamlcheck.Finding{{Line: 1, Msg: "the job is empty; it needs at least job_queue"}}
	}
	if !yamlcheck.IsMap(root) {
		return []yamlcheck.Finding{yamlcheck.Errorf(root, "a job must be a mapping, not %s", yamlcheck.Describe(root))}
	}
	vals, fs := checkKeys(root, "", jobKeys, true)
	if _, ok := vals["job_queue"]; !ok && !misspelt(vals, "job_queue") {
		fs = append(fs, yamlcheck.Errorf(root, "missing required key 'job_queue'"))
	}
	if n := vals["test_data"]; yamlcheck.IsMap(n) {
		tv, tfs := checkKeys(n, "test_data.", testDataKeys, true)
		fs = append(fs, tfs...)
		if p := tv["test_password"]; p != nil && yamlcheck.IsScalar(p) && p.Value != "" {
			fs = append(fs, yamlcheck.Warnf(p, "'test_data.test_password' puts a password in git; pass it as a job secret instead"))
		}
	}
	if n := vals["reserve_data"]; yamlcheck.IsMap(n) {
		_, rfs := checkKeys(n, "reserve_data.", reserveDataKeys, true)
		fs = append(fs, rfs...)
	}
	return fs
}

// misspelt reports whether a present key looks like a misspelling of want,
// which is then already reported as unknown with a suggestion.
func misspelt(vals map[string]*yaml.Node, want string) bool {
	for k := range vals {
		if k != want && yamlcheck.Suggest(k, []string{want}) == want {
			return true
		}
	}
	return false
}

// looksNumeric reports whether s is only digits and dots: meant as an IPv4
// address, so it must parse as one.
func looksNumeric(s string) bool {
	return strings.Trim(s, "0123456789.") == ""
}

func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// NormalizeServer adds http:// to a server address that has no scheme, as
// testflinger-agent does.
func NormalizeServer(addr string) string {
	if addr == "" || strings.Contains(addr, "://") {
		return addr
	}
	return fmt.Sprintf("http://%s", addr)
}
