package runtime

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"

	"github.com/labsync/labsync/lab"
)

// AgentBinaryName is the file name of labsync-agent: in the volume, next
// to labsync, and on PATH.
const AgentBinaryName = "labsync-agent"

// LabelAgentBinary marks the volume that holds labsync-agent for a lab's
// agent containers; its value is the binary's SHA-256. Such a volume is
// labsync's own, never declared in the repository.
const LabelAgentBinary = "io.labsync.agent-binary"

// labelAgentBinaryLoader marks the short-lived container that fills such a
// volume. It carries no LabelManaged, so Observe never sees it.
const labelAgentBinaryLoader = "io.labsync.agent-binary-loader"

// agentBinaryMarker is written into the volume after the binary: a volume
// without it was not filled completely.
const agentBinaryMarker = ".labsync-agent.complete"

// ErrNoAgentBinary is returned when an agent container runs labsync-agent
// from AgentBinDir, its image has none there and labsync was given none.
var ErrNoAgentBinary = errors.New("no labsync-agent binary to give agent containers")

// AgentBinary is a labsync-agent binary for a lab's agent containers: it
// is copied once into Volume, which every agent container mounts
// read-only at lab.AgentBinDir.
type AgentBinary struct {
	// Path is the binary on this machine.
	Path string
	// Digest is the binary's SHA-256, in hex.
	Digest string
	// Volume is the volume that holds it: <lab>_labsync-agent-<digest[:12]>.
	Volume string

	data []byte
	// filled is set, under the client's lock of Volume, once the volume
	// is known to hold the binary.
	filled bool
}

// FindAgentBinary returns the labsync-agent binary to give agent
// containers: path when it is set (it must be a file), else labsync-agent
// next to the running executable, else on PATH. It returns "" without an
// error when there is none.
func FindAgentBinary(path string) (string, error) {
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", fmt.Errorf("labsync-agent binary: %w", err)
		}
		info, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("labsync-agent binary: %w", err)
		}
		if !info.Mode().IsRegular() || info.Size() == 0 {
			return "", fmt.Errorf("labsync-agent binary %s is not a program file", abs)
		}
		return abs, nil
	}
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		p := filepath.Join(filepath.Dir(exe), AgentBinaryName)
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() && info.Size() > 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(AgentBinaryName); err == nil {
		return filepath.Abs(p)
	}
	return "", nil
}

// NeedsAgentBinary says whether an agent container runs labsync-agent from
// lab.AgentBinDir: in its command, entrypoint or healthcheck.
func NeedsAgentBinary(spec *lab.ContainerSpec) bool {
	uses := func(args []string) bool {
		return slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, lab.AgentBinDir+"/") })
	}
	return uses(spec.Command) || uses(spec.Entrypoint) || (spec.Healthcheck != nil && uses(spec.Healthcheck.Test))
}

// AgentBinaryVolume reads the labsync-agent binary at path and makes sure
// the lab's volume for it exists. The volume is filled at the first agent
// create that mounts it (it needs an image to do so without pulling one).
func (c *Client) AgentBinaryVolume(ctx context.Context, labName, path string) (*AgentBinary, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read labsync-agent binary: %w", err)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("labsync-agent binary %s is empty", path)
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	bin := &AgentBinary{Path: path, Digest: digest, Volume: labName + "_labsync-agent-" + digest[:12], data: data}
	if _, err := c.api.VolumeInspect(ctx, bin.Volume); err == nil {
		return bin, nil
	} else if !cerrdefs.IsNotFound(err) {
		return nil, fmt.Errorf("inspect volume %s: %w", bin.Volume, err)
	}
	_, err = c.api.VolumeCreate(ctx, volume.CreateOptions{Name: bin.Volume, Labels: map[string]string{
		LabelManaged:     "true",
		LabelLab:         labName,
		LabelAgentBinary: digest,
	}})
	if err != nil {
		return nil, fmt.Errorf("create volume %s: %w", bin.Volume, err)
	}
	c.log.Info("volume for labsync-agent created", "volume", bin.Volume, "binary", path)
	return bin, nil
}

// PruneAgentBinaryVolumes removes the lab's labsync-agent volumes other
// than keep. The engine refuses to remove a volume that a container (even
// a stopped one) uses; such a volume is kept for a later apply.
func (c *Client) PruneAgentBinaryVolumes(ctx context.Context, labName, keep string) error {
	f := labFilter(labName)
	f.Add("label", LabelAgentBinary)
	vs, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		return fmt.Errorf("list labsync-agent volumes: %w", err)
	}
	var errs []error
	for _, v := range vs.Volumes {
		if v.Name == keep {
			continue
		}
		switch err := c.api.VolumeRemove(ctx, v.Name, false); {
		case err == nil:
			c.log.Info("old labsync-agent volume removed", "volume", v.Name)
		case cerrdefs.IsConflict(err), cerrdefs.IsNotFound(err):
			// In use by a container not yet recreated, or gone.
		default:
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// agentBinaryFor returns the labsync-agent volume that spec's container
// mounts: none for a service, or for an agent that mounts something of its
// own at lab.AgentBinDir.
func agentBinaryFor(spec *lab.ContainerSpec, bin *AgentBinary) *AgentBinary {
	if bin == nil || spec.Kind != lab.KindAgent || slices.ContainsFunc(spec.Mounts, func(m lab.MountSpec) bool { return m.Target == lab.AgentBinDir }) {
		return nil
	}
	return bin
}

// agentBinaryMount is the read-only mount of bin at lab.AgentBinDir.
func agentBinaryMount(bin *AgentBinary) mount.Mount {
	return mount.Mount{Type: mount.TypeVolume, Source: bin.Volume, Target: lab.AgentBinDir, ReadOnly: true, VolumeOptions: &mount.VolumeOptions{NoCopy: true}}
}

// lockVolume returns the lock of one labsync-agent volume, locked.
func (c *Client) lockVolume(name string) *sync.Mutex {
	c.agentBinMu.Lock()
	if c.agentBinLocks == nil {
		c.agentBinLocks = map[string]*sync.Mutex{}
	}
	mu, ok := c.agentBinLocks[name]
	if !ok {
		mu = &sync.Mutex{}
		c.agentBinLocks[name] = mu
	}
	c.agentBinMu.Unlock()
	mu.Lock()
	return mu
}

// provideAgentBinary makes labsync-agent available to the created (not
// started) agent container id. With bin, the container mounts bin's
// volume: it is filled now if it is not yet, once however many agents are
// created at the same time. Without bin, an agent that needs labsync-agent
// from lab.AgentBinDir must find it in its image.
func (c *Client) provideAgentBinary(ctx context.Context, id string, spec *lab.ContainerSpec, labName string, bin *AgentBinary) error {
	if bin == nil {
		if !NeedsAgentBinary(spec) {
			return nil
		}
		_, err := c.api.ContainerStatPath(ctx, id, path.Join(lab.AgentBinDir, AgentBinaryName))
		switch {
		case err == nil:
			return nil // the image has its own
		case cerrdefs.IsNotFound(err):
			return fmt.Errorf("%w: its command runs %s, which image %s does not have; give labsync the static labsync-agent binary with --agent-binary (or LABSYNC_AGENT_BINARY), or put it next to the labsync executable",
				ErrNoAgentBinary, path.Join(lab.AgentBinDir, AgentBinaryName), spec.Image)
		default:
			return fmt.Errorf("look for %s in the container: %w", lab.AgentBinDir, err)
		}
	}
	mu := c.lockVolume(bin.Volume)
	defer mu.Unlock()
	if bin.filled {
		return nil
	}
	// The new container mounts the volume: a complete one has the marker.
	if _, err := c.api.ContainerStatPath(ctx, id, path.Join(lab.AgentBinDir, agentBinaryMarker)); err == nil {
		bin.filled = true
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("look into volume %s: %w", bin.Volume, err)
	}
	if err := c.fillAgentBinary(ctx, spec.Image, labName, bin); err != nil {
		return err
	}
	bin.filled = true
	return nil
}

// fillAgentBinary copies the binary, then the marker, into bin's volume
// through a container of image that is created and never started: no
// image is pulled and nothing runs.
func (c *Client) fillAgentBinary(ctx context.Context, image, labName string, bin *AgentBinary) (err error) {
	m := agentBinaryMount(bin)
	m.ReadOnly = false
	resp, err := c.api.ContainerCreate(ctx,
		&container.Config{
			Image: image,
			// Never run; set so that an image without a command of its
			// own can be created.
			Entrypoint: []string{path.Join(lab.AgentBinDir, AgentBinaryName)},
			Labels:     map[string]string{LabelLab: labName, labelAgentBinaryLoader: bin.Volume},
		},
		&container.HostConfig{NetworkMode: "none", Mounts: []mount.Mount{m}},
		nil, nil, "")
	if err != nil {
		return fmt.Errorf("fill volume %s: create a container of %s: %w", bin.Volume, image, err)
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rmErr := c.api.ContainerRemove(rmCtx, resp.ID, container.RemoveOptions{Force: true}); rmErr != nil && !cerrdefs.IsNotFound(rmErr) {
			err = errors.Join(err, fmt.Errorf("remove the container that filled volume %s: %w", bin.Volume, rmErr))
		}
	}()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mod := time.Unix(0, 0)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{AgentBinaryName, 0o755, bin.data},
		{agentBinaryMarker, 0o644, []byte(bin.Digest + "\n")},
	} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: mod}); err != nil {
			return fmt.Errorf("archive labsync-agent: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("archive labsync-agent: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive labsync-agent: %w", err)
	}
	if err := c.api.CopyToContainer(ctx, resp.ID, lab.AgentBinDir, &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("copy labsync-agent into volume %s: %w", bin.Volume, err)
	}
	c.log.Info("labsync-agent copied into its volume", "volume", bin.Volume, "digest", bin.Digest[:12])
	return nil
}
