package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net"
	"sort"
	"time"
)

// Kind is the kind of a managed container.
type Kind string

// Container kinds.
const (
	KindAgent   Kind = "agent"
	KindService Kind = "service"
)

// AsideSuffix ends the name of a container that a recreate has stopped and
// set aside; no lab object may end with it.
const AsideSuffix = ".labsync-old"

// SchemaVersion is stamped on every managed object; it changes when the
// meaning of the spec hash changes. Schema 1 hashed files by their content,
// schema 2 by its SHA-256: containers made under schema 1 are compared
// with LegacyHash, so an upgrade recreates nothing.
const SchemaVersion = "2"

// Desired is the state a lab's Docker host should be in.
type Desired struct {
	Lab      string
	Revision string
	Networks []NetworkSpec
	Volumes  []VolumeSpec
	Images   []ImageSpec
	// Containers are sorted by kind (services first) and name.
	Containers []ContainerSpec
	Prune      PrunePolicy
	Update     UpdatePolicy
	// TestflingerServer is the lab's Testflinger server (lab.yaml), used
	// to ask whether an agent is busy.
	TestflingerServer string
	// MQTTPrefix is the lab's MQTT topic prefix (default labsync/<lab>).
	MQTTPrefix string
	// Broker is the stack's own MQTT broker, if it has one: labsync and
	// the agents report to it by default.
	Broker *StackBroker
	// Agents holds what the submit bridge needs of each enabled agent.
	Agents map[string]AgentInfo
	// ContainerPrefix begins every agent's container name.
	ContainerPrefix string
	// ComposeProject is the compose project the lab ran as before, whose
	// containers a takeover replaces.
	ComposeProject string
	// Held maps each held SUT to the errors that hold it: it has no
	// container spec, and whatever container it has is left alone.
	Held map[string]Diagnostics
}

// StackBroker is a stack service that is an MQTT broker: its image is a
// Mosquitto, or it serves container port 1883.
type StackBroker struct {
	Service string
	// HostIP and HostPort are where it publishes port 1883 on the host;
	// HostPort is empty when it does not.
	HostIP, HostPort string
}

// URL is how labsync reaches the broker from the host: its published
// port; empty when it publishes none.
func (b *StackBroker) URL() string {
	if b == nil || b.HostPort == "" {
		return ""
	}
	host := b.HostIP
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, b.HostPort)
}

// AgentInfo is an agent's job template, queues and Testflinger server.
type AgentInfo struct {
	// JobTemplate is sut/<name>.yaml, empty when there is none.
	JobTemplate []byte
	// Queues are the job_queues of sut/<name>.conf: the only queues jobs
	// submitted for this agent may name.
	Queues []string
	// Server is lab.yaml's testflinger.server, else the agent's
	// server_address.
	Server string
}

// PrunePolicy says whether orphans are removed and the guard against mass
// removal.
type PrunePolicy struct {
	Enabled bool
	// MaxFraction is the largest fraction of the running agents one pass
	// may remove.
	MaxFraction float64
}

// UpdatePolicy says how containers are started and replaced.
type UpdatePolicy struct {
	Parallelism  int
	StartTimeout time.Duration
	MinUptime    time.Duration
	// BusyTimeout and BusyPolicy: see UpdateConfig.
	BusyTimeout time.Duration
	BusyPolicy  string
}

// NetworkSpec is a network to create.
type NetworkSpec struct {
	Key        string            `json:"-"`
	Name       string            `json:"name"`
	Driver     string            `json:"driver,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
	IPAM       []IPAMPool        `json:"ipam,omitempty"`
	Hash       string            `json:"-"`
}

// Subnets are the network's declared subnets.
func (n NetworkSpec) Subnets() []string {
	var out []string
	for _, p := range n.IPAM {
		if p.Subnet != "" {
			out = append(out, p.Subnet)
		}
	}
	return out
}

// IPAMPool is one address pool of a network.
type IPAMPool struct {
	Subnet  string `json:"subnet,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	IPRange string `json:"ip_range,omitempty"`
}

// VolumeSpec is a named volume to create.
type VolumeSpec struct {
	Key        string            `json:"-"`
	Name       string            `json:"name"`
	Driver     string            `json:"driver,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
	Hash       string            `json:"-"`
}

// ImageSpec is an image to build from the repository.
type ImageSpec struct {
	Tag     string
	Context *BuildContext
	// Source is the file system the context is read from.
	Source fs.FS
}

// ContainerSpec is everything that defines one container. Its Hash covers
// every field that has a JSON name.
type ContainerSpec struct {
	Name          string              `json:"-"`
	Kind          Kind                `json:"-"`
	ContainerName string              `json:"container_name"`
	Image         string              `json:"image"`
	Command       []string            `json:"command,omitempty"`
	Entrypoint    []string            `json:"entrypoint,omitempty"`
	Env           map[string]string   `json:"env,omitempty"`
	Secrets       map[string]string   `json:"secrets,omitempty"`
	Files         []FileSpec          `json:"files,omitempty"`
	Mounts        []MountSpec         `json:"mounts,omitempty"`
	Networks      []NetworkAttachSpec `json:"networks,omitempty"`
	Ports         []PortSpec          `json:"ports,omitempty"`
	Expose        []string            `json:"expose,omitempty"`
	ExtraHosts    []string            `json:"extra_hosts,omitempty"`
	DNS           []string            `json:"dns,omitempty"`
	Restart       string              `json:"restart,omitempty"`
	Healthcheck   *HealthSpec         `json:"healthcheck,omitempty"`
	Labels        map[string]string   `json:"labels,omitempty"`
	Hostname      string              `json:"hostname,omitempty"`
	Domainname    string              `json:"domainname,omitempty"`
	Privileged    bool                `json:"privileged,omitempty"`
	Sysctls       map[string]string   `json:"sysctls,omitempty"`
	CapAdd        []string            `json:"cap_add,omitempty"`
	Devices       []DeviceSpec        `json:"devices,omitempty"`
	Memory        int64               `json:"memory,omitempty"`
	User          string              `json:"user,omitempty"`
	WorkingDir    string              `json:"working_dir,omitempty"`
	Tty           bool                `json:"tty,omitempty"`
	// Init runs Docker's init as PID 1 to reap orphaned processes.
	Init      bool `json:"init,omitempty"`
	StdinOpen bool `json:"stdin_open,omitempty"`

	// Device is the agent's device address (device_ip), stamped as a
	// label so that no two agents ever drive one device.
	Device string `json:"-"`
	// DependsOn orders services at apply; it does not change the container.
	DependsOn []Dependency `json:"-"`
	// Sources are the repository files that define the container.
	Sources []string `json:"-"`
	// BuildTag is the tag of the image built for this container, if any.
	BuildTag string `json:"-"`
	// Hash is the spec hash; Fields a short digest per field and per file
	// key, so a change can be explained.
	Hash   string            `json:"-"`
	Fields map[string]string `json:"-"`
}

// FileSpec is a file copied into the container before it starts. The spec
// hash covers its path, mode and Digest, never the content itself: a
// folder mounted by many services is hashed once.
type FileSpec struct {
	Path    string            `json:"path"`
	Mode    int64             `json:"mode"`
	Content []byte            `json:"-"`
	Digest  string            `json:"digest"`
	Source  string            `json:"-"`
	Keys    map[string]string `json:"-"`
	// legacy encodes the content itself, as schema 1 did.
	legacy bool
}

// MarshalJSON encodes the file for the spec hash.
func (f FileSpec) MarshalJSON() ([]byte, error) {
	if f.legacy {
		return json.Marshal(struct {
			Path    string `json:"path"`
			Mode    int64  `json:"mode"`
			Content []byte `json:"content"`
		}{f.Path, f.Mode, f.Content})
	}
	type plain FileSpec // without this method
	return json.Marshal(plain(f))
}

// MountSpec is a bind mount of a host path or a named volume.
type MountSpec struct {
	Type     string `json:"type"`
	Source   string `json:"source,omitempty"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Create makes a missing bind source (a runtime-data folder).
	Create bool `json:"create,omitempty"`
}

// NetworkAttachSpec connects the container to a network.
type NetworkAttachSpec struct {
	Network     string   `json:"network"`
	IPv4Address string   `json:"ipv4_address,omitempty"`
	Aliases     []string `json:"aliases,omitempty"`
}

// PortSpec publishes a container port on the host.
type PortSpec struct {
	HostIP        string `json:"host_ip,omitempty"`
	HostPort      string `json:"host_port,omitempty"`
	ContainerPort uint32 `json:"container_port"`
	Protocol      string `json:"protocol"`
}

// HealthSpec is a container healthcheck.
type HealthSpec struct {
	Test        []string      `json:"test"`
	Interval    time.Duration `json:"interval,omitempty"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	StartPeriod time.Duration `json:"start_period,omitempty"`
	Retries     int           `json:"retries,omitempty"`
}

// DeviceSpec maps a host device into the container.
type DeviceSpec struct {
	Host        string `json:"host"`
	Container   string `json:"container"`
	Permissions string `json:"permissions,omitempty"`
}

// Dependency is a service this one waits for.
type Dependency struct {
	Name      string
	Condition string
}

// seal computes the spec hash and the per-field digests of c.
func (c *ContainerSpec) seal() {
	data, err := json.Marshal(c)
	if err != nil {
		panic("lab: container spec does not encode: " + err.Error()) // all fields are plain data
	}
	sum := sha256.Sum256(data)
	c.Hash = hex.EncodeToString(sum[:])
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(data, &fields)
	c.Fields = make(map[string]string, len(fields))
	for k, v := range fields {
		if k == "files" {
			continue
		}
		c.Fields[k] = shortDigest(v)
	}
	for _, f := range c.Files {
		id := f.Source
		if id == "" {
			id = f.Path
		}
		enc, _ := json.Marshal(f)
		c.Fields["file:"+id] = shortDigest(enc)
		for k, d := range f.Keys {
			c.Fields["file:"+id+"#"+k] = d
		}
	}
}

// LegacyHash is the spec hash as schema 1 computed it, with the files'
// content in the encoding. Only containers made under schema 1 need it.
func (c *ContainerSpec) LegacyHash() string {
	old := *c
	old.Files = make([]FileSpec, len(c.Files))
	for i, f := range c.Files {
		f.legacy = true
		old.Files[i] = f
	}
	data, err := json.Marshal(&old)
	if err != nil {
		panic("lab: container spec does not encode: " + err.Error())
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// sealNetwork and sealVolume hash network and volume specs.
func hashJSON(v any) string {
	data, _ := json.Marshal(v)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// FieldNames returns the sorted keys of a field-digest map.
func FieldNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
