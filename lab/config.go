package lab

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is lab.yaml: lab-wide settings. Every key is optional; docs/lab-yaml.md
// documents each one. Unknown keys are errors.
type Config struct {
	Name            string            `yaml:"name"`
	Stack           string            `yaml:"stack"`
	ContainerPrefix string            `yaml:"container_prefix"`
	Agents          AgentsConfig      `yaml:"agents"`
	Prune           PruneConfig       `yaml:"prune"`
	MQTT            MQTTConfig        `yaml:"mqtt"`
	Testflinger     TestflingerConfig `yaml:"testflinger"`
	// DataDir is the host folder of the lab's runtime data (relative bind
	// mounts the repository does not hold); default
	// <labsync data folder>/labs/<lab>.
	DataDir string `yaml:"data_dir"`
	// Adopt says what the lab ran as before labsync, to take it over.
	Adopt AdoptConfig `yaml:"adopt"`
}

// AdoptConfig names the old stack's objects a takeover reuses.
type AdoptConfig struct {
	// ComposeProject is the compose project the stack ran as: its
	// services' containers are taken over (labsync apply --adopt), and
	// its volumes keep compose's names (<project>_<volume>) and data.
	ComposeProject string `yaml:"compose_project"`
	// Volumes maps a volume of the compose file to the name of an
	// existing volume to reuse.
	Volumes map[string]string `yaml:"volumes"`
}

// AgentsConfig says how an agent container is made from a SUT's files.
type AgentsConfig struct {
	Dir         string                   `yaml:"dir"`
	Image       ImageConfig              `yaml:"image"`
	Command     []string                 `yaml:"command"`
	Files       FilesConfig              `yaml:"files"`
	Env         map[string]string        `yaml:"env"`
	Secrets     map[string]string        `yaml:"secrets"`
	Labels      map[string]string        `yaml:"labels"`
	Restart     string                   `yaml:"restart"`
	Memory      ByteSize                 `yaml:"memory"`
	Healthcheck *HealthcheckConfig       `yaml:"healthcheck"`
	Networks    map[string]NetworkAttach `yaml:"networks"`
	Update      UpdateConfig             `yaml:"update"`
}

// ImageConfig names the agent image, or the build context it is built from.
type ImageConfig struct {
	Name  string       `yaml:"name"`
	Build *BuildConfig `yaml:"build"`
}

// BuildConfig is an image build context inside the repository.
type BuildConfig struct {
	Context    string            `yaml:"context"`
	Dockerfile string            `yaml:"dockerfile"`
	Args       map[string]string `yaml:"args"`
}

// FilesConfig says where each SUT file lands in its container. "{name}" and
// "{lab}" are replaced. Conf and Connector have defaults; Job is copied only
// when a path is given.
type FilesConfig struct {
	Conf      string `yaml:"conf"`
	Connector string `yaml:"connector"`
	Job       string `yaml:"job"`
}

// HealthcheckConfig is a container healthcheck.
type HealthcheckConfig struct {
	Test        []string `yaml:"test"`
	Interval    Duration `yaml:"interval"`
	Timeout     Duration `yaml:"timeout"`
	StartPeriod Duration `yaml:"start_period"`
	Retries     int      `yaml:"retries"`
	Disable     bool     `yaml:"disable"`
}

// NetworkAttach attaches a container to a stack network.
type NetworkAttach struct {
	IPv4Address string   `yaml:"ipv4_address"`
	Aliases     []string `yaml:"aliases"`
}

// UpdateConfig tunes how apply creates and recreates containers.
type UpdateConfig struct {
	Parallelism  int      `yaml:"parallelism"`
	StartTimeout Duration `yaml:"start_timeout"`
	MinUptime    Duration `yaml:"min_uptime"`
	// BusyTimeout bounds how long a change to a busy agent waits for its
	// job to end; BusyPolicy says what happens then: recreate or wait.
	BusyTimeout Duration `yaml:"busy_timeout"`
	BusyPolicy  string   `yaml:"busy_policy"`
}

// PruneConfig controls removal of containers no longer declared.
type PruneConfig struct {
	Enabled     *bool    `yaml:"enabled"`
	MaxFraction *float64 `yaml:"max_fraction"`
}

// MQTTConfig holds the lab's MQTT settings.
type MQTTConfig struct {
	Prefix string `yaml:"prefix"`
}

// TestflingerConfig holds the lab's Testflinger server.
type TestflingerConfig struct {
	Server string `yaml:"server"`
}

// AgentOverride is sut/<name>.lab.yaml: per-agent settings that win over
// lab.yaml.
type AgentOverride struct {
	Enabled  *bool                    `yaml:"enabled"`
	Image    string                   `yaml:"image"`
	Command  []string                 `yaml:"command"`
	Env      map[string]string        `yaml:"env"`
	Memory   ByteSize                 `yaml:"memory"`
	Networks map[string]NetworkAttach `yaml:"networks"`
}

// Defaults used when lab.yaml leaves a key out.
const (
	DefaultAgentsDir     = "sut"
	DefaultAgentImage    = "testflinger-agent:latest"
	DefaultAgentBuildDir = "images/agent"
	DefaultConfPath      = "/data/testflinger-agent/sut/{name}.conf"
	DefaultConnectorPath = "/data/snappy-device-agents/sut/{name}_snappy.yaml"
	DefaultRestart       = "always"
	DefaultParallelism   = 4
	DefaultStartTimeout  = 60 * time.Second
	DefaultMinUptime     = time.Second
	DefaultMaxFraction   = 0.5
	DefaultBusyTimeout   = 4 * time.Hour
	BusyPolicyRecreate   = "recreate"
	BusyPolicyWait       = "wait"
)

// AgentBinDir is where every agent container finds the labsync-agent that
// labsync gives it: a read-only volume mounted at create, holding
// AgentBinDir/labsync-agent. It is not part of the spec, so its hash does
// not change when labsync is upgraded.
const AgentBinDir = "/opt/labsync"

// DefaultAgentCommand runs testflinger-agent on the SUT's configuration,
// supervised by the labsync-agent that labsync gives the container at
// AgentBinDir, so the agent image needs none of its own.
var DefaultAgentCommand = []string{AgentBinDir + "/labsync-agent", "run", "--sut", "{name}", "--", "testflinger-agent", "-c", "{conf}"}

// DefaultAgentHealthcheck asks labsync-agent whether the agent works.
var DefaultAgentHealthcheck = HealthcheckConfig{
	Test:        []string{"CMD", AgentBinDir + "/labsync-agent", "healthcheck"},
	Interval:    Duration(10 * time.Second),
	Timeout:     Duration(5 * time.Second),
	StartPeriod: Duration(30 * time.Second),
	Retries:     3,
}

// Duration is a time.Duration written as "30s", "5m" or "1h30m".
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a duration such as 30s or 5m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration; write it like 30s, 5m or 1h30m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// ByteSize is a size in bytes, written as a number or with a unit: 512m, 1g.
type ByteSize int64

// UnmarshalYAML reads sizes like 1073741824, 1024k, 512m or 1g.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a size such as 512m or 1g")
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = ByteSize(v)
	return nil
}

// ParseByteSize reads a size with an optional b, k, m or g unit (powers of 1024).
func ParseByteSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "ib"), "b")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k':
			mult, t = 1<<10, t[:len(t)-1]
		case 'm':
			mult, t = 1<<20, t[:len(t)-1]
		case 'g':
			mult, t = 1<<30, t[:len(t)-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size; write it like 512m or 1g", s)
	}
	return v * mult, nil
}
