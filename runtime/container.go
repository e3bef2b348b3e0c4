package runtime

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"

	"github.com/labsync/labsync/internal/redact"
	"github.com/labsync/labsync/lab"
)

// CreateOptions are the lab-wide facts stamped on a new container.
type CreateOptions struct {
	Lab      string
	Revision string
	// Name overrides the container name (used to create beside an old one).
	Name string
	// Source, when set, is stamped as LabelSource.
	Source string
	// AgentBinary, when set, is mounted read-only at lab.AgentBinDir in
	// agent containers (and filled first if need be). It is added at
	// create and is not part of the spec hash.
	AgentBinary *AgentBinary
	// AgentMQTTDir, when set, is the host folder of the embedded broker's
	// agents' socket: agent containers whose environment names no broker
	// get it mounted at AgentMQTTMount and LABSYNC_AGENT_MQTT pointing at
	// the socket. Added at create; not part of the spec hash.
	AgentMQTTDir string
}

// AgentMQTTMount is where agent containers see the embedded broker's
// agents' socket folder; AgentMQTTSocket is the socket's file name there.
const (
	AgentMQTTMount  = "/run/labsync-mqtt"
	AgentMQTTSocket = "agents.sock"
)

// ErrNameInUse is returned when a container of the wanted name exists but
// is not managed by this lab. labsync never touches it.
var ErrNameInUse = errors.New("container name in use by a container labsync does not manage")

// ManagedLabels returns the labels that mark a container spec as applied.
func ManagedLabels(spec *lab.ContainerSpec, labName, revision string) map[string]string {
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	fields, _ := json.Marshal(spec.Fields)
	labels[LabelManaged] = "true"
	labels[LabelLab] = labName
	labels[LabelKind] = string(spec.Kind)
	labels[LabelObject] = spec.Name
	labels[LabelHash] = spec.Hash
	labels[LabelFields] = string(fields)
	labels[LabelRevision] = revision
	labels[LabelSchema] = lab.SchemaVersion
	if spec.Device != "" {
		labels[LabelDevice] = spec.Device
	}
	return labels
}

// createLabels are the labels of a new container: ManagedLabels, and the
// lab's source when known.
func createLabels(spec *lab.ContainerSpec, opts CreateOptions) map[string]string {
	labels := ManagedLabels(spec, opts.Lab, opts.Revision)
	if opts.Source != "" {
		labels[LabelSource] = opts.Source
	}
	return labels
}

// CreateContainer creates (but does not start) the container of spec,
// connects its networks and copies its files in. On failure nothing is
// left behind.
func (c *Client) CreateContainer(ctx context.Context, spec *lab.ContainerSpec, opts CreateOptions) (id string, err error) {
	cfg, host, netcfg, err := c.containerConfig(spec, opts)
	if err != nil {
		return "", err
	}
	name := opts.Name
	if name == "" {
		name = spec.ContainerName
	}
	resp, err := c.api.ContainerCreate(ctx, cfg, host, netcfg, nil, name)
	if err != nil {
		if cerrdefs.IsConflict(err) {
			return "", fmt.Errorf("create %s: %w; rename or remove that container", name, ErrNameInUse)
		}
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("create %s: image %s is not on this host; build or load it (labsync pulls nothing): %w", name, spec.Image, err)
		}
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			// A half-made container must not linger: remove it with a
			// context that outlives a cancelled apply.
			rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = c.api.ContainerRemove(rmCtx, resp.ID, container.RemoveOptions{Force: true})
		}
	}()
	for _, n := range spec.Networks[min(1, len(spec.Networks)):] {
		if err := c.api.NetworkConnect(ctx, n.Network, resp.ID, endpoint(n)); err != nil {
			return "", fmt.Errorf("connect %s to network %s: %w", name, n.Network, err)
		}
	}
	if spec.Kind == lab.KindAgent {
		if err := c.provideAgentBinary(ctx, resp.ID, spec, opts.Lab, agentBinaryFor(spec, opts.AgentBinary)); err != nil {
			return "", fmt.Errorf("create %s: %w", name, err)
		}
	}
	if len(spec.Files) > 0 {
		archive, err := filesTar(spec.Files)
		if err != nil {
			return "", err
		}
		if err := c.api.CopyToContainer(ctx, resp.ID, "/", archive, container.CopyToContainerOptions{}); err != nil {
			return "", fmt.Errorf("copy files into %s: %w", name, err)
		}
	}
	return resp.ID, nil
}

func endpoint(n lab.NetworkAttachSpec) *network.EndpointSettings {
	ep := &network.EndpointSettings{Aliases: n.Aliases}
	if n.IPv4Address != "" {
		ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: n.IPv4Address}
	}
	return ep
}

func (c *Client) containerConfig(spec *lab.ContainerSpec, opts CreateOptions) (*container.Config, *container.HostConfig, *network.NetworkingConfig, error) {
	env := make([]string, 0, len(spec.Env)+len(spec.Secrets))
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	for k, name := range spec.Secrets {
		v, err := c.secrets.Secret(name)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("secret %s for %s: %w", name, k, err)
		}
		env = append(env, k+"="+v)
	}
	if spec.Kind == lab.KindAgent && len(spec.Secrets) > 0 {
		env = agentSecretEnv(env, spec)
	}
	_, ownBroker := spec.Env["LABSYNC_AGENT_MQTT"]
	_, secretBroker := spec.Secrets["LABSYNC_AGENT_MQTT"]
	agentMQTT := spec.Kind == lab.KindAgent && opts.AgentMQTTDir != "" && !ownBroker && !secretBroker
	if agentMQTT {
		env = append(env, "LABSYNC_AGENT_MQTT=unix://"+AgentMQTTMount+"/"+AgentMQTTSocket)
	}
	sort.Strings(env)
	cfg := &container.Config{
		Image:      spec.Image,
		Cmd:        spec.Command,
		Entrypoint: spec.Entrypoint,
		Env:        env,
		Labels:     createLabels(spec, opts),
		Hostname:   spec.Hostname,
		Domainname: spec.Domainname,
		User:       spec.User,
		WorkingDir: spec.WorkingDir,
		Tty:        spec.Tty,
		OpenStdin:  spec.StdinOpen,
	}
	if h := spec.Healthcheck; h != nil {
		cfg.Healthcheck = &container.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
	}
	host := &container.HostConfig{
		RestartPolicy: restartPolicy(spec.Restart),
		ExtraHosts:    spec.ExtraHosts,
		DNS:           spec.DNS,
		Privileged:    spec.Privileged,
		Sysctls:       spec.Sysctls,
		CapAdd:        spec.CapAdd,
	}
	if spec.Init {
		host.Init = &spec.Init
	}
	host.Resources.Memory = spec.Memory
	for _, d := range spec.Devices {
		perms := d.Permissions
		if perms == "" {
			perms = "rwm"
		}
		host.Resources.Devices = append(host.Resources.Devices, container.DeviceMapping{PathOnHost: d.Host, PathInContainer: d.Container, CgroupPermissions: perms})
	}
	for _, m := range spec.Mounts {
		if m.Create {
			// A runtime-data folder: the engine makes a missing bind
			// source of the old -v form on its own host (the mount API
			// refuses it), wherever labsync runs.
			bind := m.Source + ":" + m.Target
			if m.ReadOnly {
				bind += ":ro"
			}
			host.Binds = append(host.Binds, bind)
			continue
		}
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.Type(m.Type), Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	if bin := agentBinaryFor(spec, opts.AgentBinary); bin != nil {
		host.Mounts = append(host.Mounts, agentBinaryMount(bin))
	}
	if agentMQTT {
		// The old -v form: the engine makes the folder when the broker
		// has not yet; labsync-agent connects once the socket is there.
		host.Binds = append(host.Binds, opts.AgentMQTTDir+":"+AgentMQTTMount)
	}
	if len(spec.Ports) > 0 || len(spec.Expose) > 0 {
		cfg.ExposedPorts = nat.PortSet{}
		host.PortBindings = nat.PortMap{}
	}
	for _, e := range spec.Expose {
		cfg.ExposedPorts[nat.Port(e)] = struct{}{}
	}
	for _, p := range spec.Ports {
		port := nat.Port(fmt.Sprintf("%d/%s", p.ContainerPort, p.Protocol))
		cfg.ExposedPorts[port] = struct{}{}
		// A port without a host port is published on a free one, as
		// Compose does.
		host.PortBindings[port] = append(host.PortBindings[port], nat.PortBinding{HostIP: p.HostIP, HostPort: p.HostPort})
	}
	netcfg := &network.NetworkingConfig{}
	if len(spec.Networks) > 0 {
		first := spec.Networks[0]
		host.NetworkMode = container.NetworkMode(first.Network)
		// Engines before API 1.44 accept one network at create; the
		// others are connected before start.
		netcfg.EndpointsConfig = map[string]*network.EndpointSettings{first.Network: endpoint(first)}
	}
	return cfg, host, netcfg, nil
}

// AgentSecretEnv names, for labsync-agent, the variables of an agent
// container that hold secrets, so it hides their values in the agent's
// output. It is added at create and is not part of the spec hash.
const AgentSecretEnv = "LABSYNC_AGENT_SECRET_ENV"

// agentSecretEnv adds AgentSecretEnv, listing spec's secret variables
// (and any the lab's env already listed there), to env.
func agentSecretEnv(env []string, spec *lab.ContainerSpec) []string {
	names := make([]string, 0, len(spec.Secrets))
	for k := range spec.Secrets {
		names = append(names, k)
	}
	if v, ok := spec.Env[AgentSecretEnv]; ok {
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, AgentSecretEnv+"=") })
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return append(env, AgentSecretEnv+"="+strings.Join(slices.Compact(names), ","))
}

func restartPolicy(s string) container.RestartPolicy {
	name, count, _ := strings.Cut(s, ":")
	p := container.RestartPolicy{Name: container.RestartPolicyMode(name)}
	if name == "no" || name == "" {
		p.Name = container.RestartPolicyDisabled
	}
	if count != "" {
		fmt.Sscan(count, &p.MaximumRetryCount)
	}
	return p
}

// filesTar builds the archive copied to "/" of a new container. It holds
// no folder entries: Docker creates missing parents, and folders that exist
// in the image keep their owner and mode.
func filesTar(files []lab.FileSpec) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode, Size: int64(len(f.Content)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("archive files: %w", err)
		}
		if _, err := tw.Write(f.Content); err != nil {
			return nil, fmt.Errorf("archive files: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("archive files: %w", err)
	}
	return &buf, nil
}

// SetRestartPolicy changes the restart policy of a container: a container
// set aside gets "no", so a daemon restart does not bring it back.
//
// The engine refuses to update a container whose process has just exited
// while it still counts it as running ("cannot update a stopped
// container"), as happens again and again to one that restarts in a loop;
// such a refused update also ends the loop, with the old policy kept. So
// the update is tried again, for a few seconds, as long as the container
// exists.
func (c *Client) SetRestartPolicy(ctx context.Context, id, policy string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := c.api.ContainerUpdate(ctx, id, container.UpdateConfig{RestartPolicy: restartPolicy(policy)})
		if err == nil {
			return nil
		}
		if _, ierr := c.api.ContainerInspect(ctx, id); ierr != nil {
			return fmt.Errorf("update restart policy: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("update restart policy: %w", err)
		case <-tick.C:
		}
	}
}

// Preflight checks, without changing anything, what creating spec needs:
// its secrets, its image, its networks, and that asideName (when given) is
// free. A recreate runs it before stopping the old container.
func (c *Client) Preflight(ctx context.Context, spec *lab.ContainerSpec, asideName string) error {
	for k, name := range spec.Secrets {
		if _, err := c.secrets.Secret(name); err != nil {
			return fmt.Errorf("secret %s for %s: %w", name, k, err)
		}
	}
	if _, err := c.api.ImageInspect(ctx, spec.Image); err != nil {
		if cerrdefs.IsNotFound(err) {
			return fmt.Errorf("image %s is not on this host; build or load it (labsync pulls nothing)", spec.Image)
		}
		return fmt.Errorf("inspect image %s: %w", spec.Image, err)
	}
	for _, n := range spec.Networks {
		if _, err := c.api.NetworkInspect(ctx, n.Network, network.InspectOptions{}); err != nil {
			return fmt.Errorf("network %s: %w", n.Network, err)
		}
	}
	if asideName != "" {
		if info, err := c.api.ContainerInspect(ctx, asideName); err == nil {
			if info.Config == nil || info.Config.Labels[LabelManaged] == "" {
				return fmt.Errorf("cannot set the old container aside: %s exists and labsync did not create it; "+
					"only if it is the old container an interrupted takeover set aside, `labsync apply --adopt` finishes the takeover "+
					"(it treats that name as its own); else rename or remove it", asideName)
			}
			return fmt.Errorf("cannot set the old container aside: %s exists; remove it", asideName)
		} else if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("inspect %s: %w", asideName, err)
		}
	}
	return nil
}

// StartContainer starts a created or stopped container, or resumes a
// paused one.
func (c *Client) StartContainer(ctx context.Context, id string) error {
	err := c.api.ContainerStart(ctx, id, container.StartOptions{})
	if err == nil {
		return nil
	}
	// The engine will not start a paused container: it is resumed.
	if info, ierr := c.api.ContainerInspect(ctx, id); ierr == nil && info.State != nil && info.State.Paused {
		if uerr := c.api.ContainerUnpause(ctx, id); uerr != nil {
			return fmt.Errorf("unpause: %w", uerr)
		}
		return nil
	}
	return fmt.Errorf("start: %w", err)
}

// StopContainer stops a container, giving it timeout to exit before it is
// killed (see stopOptions). A container already stopped is not an error.
func (c *Client) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	opts, err := stopOptions(timeout)
	if err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	if err := c.api.ContainerStop(ctx, id, opts); err != nil && !cerrdefs.IsNotModified(err) {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

// ErrNegativeStopTimeout is returned for a stop timeout below zero.
var ErrNegativeStopTimeout = errors.New("stop timeout is negative")

// stopOptions gives a container timeout to exit after the stop signal,
// rounded up to whole seconds (the engine's unit), before it is killed.
// Zero means the engine's default grace: the container's own stop timeout,
// else 10 s. Never zero seconds: that would kill without grace.
func stopOptions(timeout time.Duration) (container.StopOptions, error) {
	switch {
	case timeout < 0:
		return container.StopOptions{}, fmt.Errorf("%w: %s", ErrNegativeStopTimeout, timeout)
	case timeout == 0:
		return container.StopOptions{}, nil
	}
	secs := int((timeout + time.Second - 1) / time.Second)
	return container.StopOptions{Timeout: &secs}, nil
}

// RenameContainer renames a container.
func (c *Client) RenameContainer(ctx context.Context, id, name string) error {
	if err := c.api.ContainerRename(ctx, id, name); err != nil {
		if cerrdefs.IsConflict(err) {
			return fmt.Errorf("rename to %s: %w", name, ErrNameInUse)
		}
		return fmt.Errorf("rename to %s: %w", name, err)
	}
	return nil
}

// RemoveContainer removes a container, stopping it first if it runs. Named
// volumes are kept. A container already gone is not an error.
func (c *Client) RemoveContainer(ctx context.Context, id string) error {
	err := c.api.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}

// WaitOptions say when a started container counts as up.
type WaitOptions struct {
	// Healthy waits for Docker's health status to be healthy, when the
	// container has a healthcheck.
	Healthy bool
	// MinUptime is how long a container without a healthcheck (or waited
	// for without Healthy) must keep running.
	MinUptime time.Duration
	Timeout   time.Duration
	// Poll is the inspect interval; 0 means 200ms.
	Poll time.Duration
}

// WaitRunning waits until a started container is running (and healthy,
// when asked) or reports why it is not, with the tail of its log.
func (c *Client) WaitRunning(ctx context.Context, id string, o WaitOptions) error {
	if o.Poll == 0 {
		o.Poll = 200 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	tick := time.NewTicker(o.Poll)
	defer tick.Stop()
	// Uptime is measured from when this client first sees the container
	// running, so a remote engine's clock does not matter.
	var runningSince time.Time
	restarts := -1
	// "unhealthy" ends the wait at once only when the wait saw it come: a
	// container resumed from pause is unhealthy from the checks that
	// failed while it was paused, and gets until the timeout to pass one.
	staleUnhealthy, seen := false, false
	for {
		info, err := c.api.ContainerInspect(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("not up within %s", o.Timeout)
			}
			return fmt.Errorf("inspect: %w", err)
		}
		st := info.State
		if restarts < 0 {
			restarts = info.RestartCount
		}
		if !seen && st != nil {
			staleUnhealthy, seen = st.Health != nil && st.Health.Status == "unhealthy", true
		}
		switch {
		case info.RestartCount > restarts && st != nil:
			return fmt.Errorf("exited with code %d and was restarted by Docker%s", st.ExitCode, c.logTail(ctx, id))
		case st == nil:
		case !st.Running && (st.Status == "exited" || st.Status == "dead"):
			return fmt.Errorf("exited with code %d%s", st.ExitCode, c.logTail(ctx, id))
		case st.Restarting:
			return fmt.Errorf("exited with code %d and is restarting%s", st.ExitCode, c.logTail(ctx, id))
		case st.Running && o.Healthy && st.Health != nil:
			if st.Health.Status == "healthy" {
				return nil
			}
			if st.Health.Status != "unhealthy" {
				staleUnhealthy = false
			}
			if st.Health.Status == "unhealthy" && !staleUnhealthy {
				return fmt.Errorf("unhealthy%s", c.logTail(ctx, id))
			}
		case st.Running:
			if runningSince.IsZero() {
				runningSince = time.Now()
			}
			if time.Since(runningSince) >= o.MinUptime {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not up within %s%s", o.Timeout, c.logTail(context.WithoutCancel(ctx), id))
		case <-tick.C:
		}
	}
}

// logTail returns the last lines of a container's log, for error messages.
func (c *Client) logTail(ctx context.Context, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := c.api.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "5"})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, io.LimitReader(rc, 8<<10)); err != nil && out.Len() == 0 {
		return ""
	}
	s := strings.TrimSpace(out.String())
	if s == "" {
		return ""
	}
	return "; last log lines: " + redact.String(strings.ReplaceAll(s, "\n", " | "))
}

// AgentHeartbeatPath is where labsync-agent keeps its heartbeat inside an
// agent container.
const AgentHeartbeatPath = "/run/labsync-agent/heartbeat.json"

// Activity is what an agent container's supervisor says it is doing.
type Activity struct {
	// Known is false when the container has no labsync-agent heartbeat.
	Known   bool
	Busy    bool
	JobID   string
	Since   time.Time
	Offline bool
}

// AgentActivity reads the labsync-agent heartbeat out of a running agent
// container through the archive API: no network into the container.
func (c *Client) AgentActivity(ctx context.Context, id string) (Activity, error) {
	rc, _, err := c.api.CopyFromContainer(ctx, id, AgentHeartbeatPath)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return Activity{}, nil
		}
		return Activity{}, fmt.Errorf("read agent heartbeat: %w", err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return Activity{}, fmt.Errorf("read agent heartbeat: %w", err)
	}
	var hb struct {
		Time     time.Time     `json:"time"`
		Interval time.Duration `json:"interval_ns"`
		State    string        `json:"state"`
		JobID    string        `json:"job_id"`
		Since    time.Time     `json:"since"`
		Offline  bool          `json:"offline"`
	}
	if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&hb); err != nil {
		return Activity{}, fmt.Errorf("read agent heartbeat: %w", err)
	}
	// A stale heartbeat means the supervisor is gone: what it last said
	// about a job no longer holds.
	fresh := time.Since(hb.Time) < max(3*hb.Interval, 30*time.Second)
	return Activity{Known: true, Busy: fresh && hb.State == "busy", JobID: hb.JobID, Since: hb.Since, Offline: fresh && hb.Offline}, nil
}

// RestartContainer stops a container (within timeout, as StopContainer)
// and starts it again.
func (c *Client) RestartContainer(ctx context.Context, id string, timeout time.Duration) error {
	opts, err := stopOptions(timeout)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := c.api.ContainerRestart(ctx, id, opts); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// FailingStreak returns how many healthchecks in a row a container failed.
func (c *Client) FailingStreak(ctx context.Context, id string) (int, error) {
	info, err := c.api.ContainerInspect(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("inspect: %w", err)
	}
	if info.State == nil || info.State.Health == nil {
		return 0, nil
	}
	return info.State.Health.FailingStreak, nil
}
