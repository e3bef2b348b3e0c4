package runtime_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// agentSpec is an agent container with the default command, not started.
func agentSpec(labName, name, image string) *lab.ContainerSpec {
	return &lab.ContainerSpec{
		Kind: lab.KindAgent, Name: name, ContainerName: labName + "-" + name, Image: image,
		Command:     []string{lab.AgentBinDir + "/labsync-agent", "run", "--sut", name, "--", "testflinger-agent", "-c", "/data/agent.conf"},
		Healthcheck: &lab.HealthSpec{Test: []string{"CMD", lab.AgentBinDir + "/labsync-agent", "healthcheck"}},
		Restart:     "no",
	}
}

// loaderCreates counts the containers made to fill volume since start.
func loaderCreates(t *testing.T, rt *runtime.Client, volume string, since time.Time) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msgs, errs := rt.API().Events(ctx, events.ListOptions{
		Since:   fmt.Sprint(since.Unix()),
		Until:   fmt.Sprint(time.Now().Add(time.Second).Unix()),
		Filters: filters.NewArgs(filters.Arg("type", "container"), filters.Arg("event", "create"), filters.Arg("label", "io.labsync.agent-binary-loader="+volume)),
	})
	n := 0
	for {
		select {
		case <-msgs:
			n++
		case err := <-errs:
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("events: %v", err)
			}
			return n
		}
	}
}

// Agents created at the same time all mount the one labsync-agent volume
// read-only; it is filled once, and a later apply finds it filled.
func TestAgentBinaryVolumeFilledOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := testenv.Docker(t)
	image := testenv.BareStandinImage(t, rt)
	binPath := testenv.AgentBinary(t)
	want, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	start := time.Now().Add(-time.Second)

	bin, err := rt.AgentBinaryVolume(ctx, name, binPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(bin.Volume, name+"_labsync-agent-") || !strings.HasPrefix(bin.Digest, strings.TrimPrefix(bin.Volume, name+"_labsync-agent-")) {
		t.Errorf("volume %s for digest %s", bin.Volume, bin.Digest)
	}
	var wg sync.WaitGroup
	ids := make([]string, 4)
	errs := make([]error, 4)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = rt.CreateContainer(ctx, agentSpec(name, fmt.Sprint("a", i), image), runtime.CreateOptions{Lab: name, AgentBinary: bin})
		}()
	}
	wg.Wait()
	for i, id := range ids {
		if errs[i] != nil {
			t.Fatalf("create a%d: %v", i, errs[i])
		}
		info, err := rt.API().ContainerInspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, m := range info.Mounts {
			if m.Destination == lab.AgentBinDir {
				found = true
				if m.Name != bin.Volume || m.RW {
					t.Errorf("a%d mounts %s (rw %v) at %s, want %s read-only", i, m.Name, m.RW, lab.AgentBinDir, bin.Volume)
				}
			}
		}
		if !found {
			t.Errorf("a%d does not mount %s", i, lab.AgentBinDir)
		}
		got, err := testenv.ReadContainerFile(ctx, rt, id, lab.AgentBinDir+"/labsync-agent")
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("a%d sees %d bytes at %s/labsync-agent (%v), want the binary", i, len(got), lab.AgentBinDir, err)
		}
	}
	if n := loaderCreates(t, rt, bin.Volume, start); n != 1 {
		t.Errorf("the volume was filled %d times, want once", n)
	}

	// The next apply gets a fresh AgentBinary and finds the volume full.
	again, err := rt.AgentBinaryVolume(ctx, name, binPath)
	if err != nil || again.Volume != bin.Volume {
		t.Fatalf("second look: %+v, %v", again, err)
	}
	if _, err := rt.CreateContainer(ctx, agentSpec(name, "late", image), runtime.CreateOptions{Lab: name, AgentBinary: again}); err != nil {
		t.Fatal(err)
	}
	if n := loaderCreates(t, rt, bin.Volume, start); n != 1 {
		t.Errorf("the volume was filled %d times, want once", n)
	}

	// It is labsync's own: observed, and marked so the plan never calls
	// it an undeclared volume.
	obs, err := rt.Observe(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.Volumes) != 1 || obs.Volumes[0].Name != bin.Volume || !obs.Volumes[0].AgentBinary {
		t.Errorf("observed volumes %+v", obs.Volumes)
	}
	// Services never get it.
	svc := agentSpec(name, "svc", image)
	svc.Kind = lab.KindService
	id, err := rt.CreateContainer(ctx, svc, runtime.CreateOptions{Lab: name, AgentBinary: bin})
	if err != nil {
		t.Fatal(err)
	}
	info, err := rt.API().ContainerInspect(ctx, id)
	if err != nil || len(info.Mounts) != 0 {
		t.Errorf("service mounts %+v (%v), want none", info.Mounts, err)
	}
}

// The volume of an older binary is removed once no container uses it,
// never before.
func TestOldAgentBinaryVolumeRemovedWhenUnused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := testenv.Docker(t)
	image := testenv.BareStandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	data, err := os.ReadFile(testenv.AgentBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	// Two versions: the second differs by a byte at the end.
	dir := t.TempDir()
	oldPath, newPath := filepath.Join(dir, "old"), filepath.Join(dir, "new")
	if err := os.WriteFile(oldPath, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(newPath, append(data, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	oldBin, err := rt.AgentBinaryVolume(ctx, name, oldPath)
	if err != nil {
		t.Fatal(err)
	}
	id, err := rt.CreateContainer(ctx, agentSpec(name, "alpha", image), runtime.CreateOptions{Lab: name, AgentBinary: oldBin})
	if err != nil {
		t.Fatal(err)
	}
	newBin, err := rt.AgentBinaryVolume(ctx, name, newPath)
	if err != nil {
		t.Fatal(err)
	}
	if newBin.Volume == oldBin.Volume {
		t.Fatalf("both binaries share volume %s", newBin.Volume)
	}
	volumes := func() []string {
		obs, err := rt.Observe(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range obs.Volumes {
			out = append(out, v.Name)
		}
		return out
	}
	if err := rt.PruneAgentBinaryVolumes(ctx, name, newBin.Volume); err != nil {
		t.Fatal(err)
	}
	if got := volumes(); !contains(got, oldBin.Volume) || !contains(got, newBin.Volume) {
		t.Errorf("volumes while the old one is in use: %v", got)
	}
	if err := rt.RemoveContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := rt.PruneAgentBinaryVolumes(ctx, name, newBin.Volume); err != nil {
		t.Fatal(err)
	}
	if got := volumes(); contains(got, oldBin.Volume) || !contains(got, newBin.Volume) {
		t.Errorf("volumes once the old one is unused: %v, want only %s", got, newBin.Volume)
	}
}

// Without a binary, an agent runs labsync-agent from its own image if it
// has one there; if not, its create fails naming the flag and leaves
// nothing behind.
func TestAgentWithoutBinaryNeedsItInItsImage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := testenv.Docker(t)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)

	if _, err := rt.CreateContainer(ctx, agentSpec(name, "own", testenv.StandinImage(t, rt)), runtime.CreateOptions{Lab: name}); err != nil {
		t.Errorf("image with its own labsync-agent: %v", err)
	}
	bare := agentSpec(name, "bare", testenv.BareStandinImage(t, rt))
	_, err := rt.CreateContainer(ctx, bare, runtime.CreateOptions{Lab: name})
	if !errors.Is(err, runtime.ErrNoAgentBinary) || !strings.Contains(err.Error(), "--agent-binary") {
		t.Errorf("image without labsync-agent: err = %v, want ErrNoAgentBinary naming --agent-binary", err)
	}
	if _, err := rt.API().ContainerInspect(ctx, bare.ContainerName); err == nil {
		t.Error("the failed container was left behind")
	}
	// An agent whose command does not use it is created as it is.
	plain := agentSpec(name, "plain", testenv.BareStandinImage(t, rt))
	plain.Command, plain.Healthcheck = []string{"testflinger-agent", "-c", "/data/agent.conf"}, nil
	if _, err := rt.CreateContainer(ctx, plain, runtime.CreateOptions{Lab: name}); err != nil {
		t.Errorf("agent without labsync-agent in its command: %v", err)
	}
}

func TestFindAgentBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "labsync-agent")
	if err := os.WriteFile(bin, []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := runtime.FindAgentBinary(bin); err != nil || got != bin {
		t.Errorf("explicit path: %q, %v", got, err)
	}
	for _, bad := range []string{filepath.Join(dir, "missing"), dir} {
		if got, err := runtime.FindAgentBinary(bad); err == nil {
			t.Errorf("FindAgentBinary(%s) = %q, want an error", bad, got)
		}
	}
	t.Setenv("PATH", dir)
	if got, err := runtime.FindAgentBinary(""); err != nil || got != bin {
		t.Errorf("on PATH: %q, %v", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	if got, err := runtime.FindAgentBinary(""); err != nil || got != "" {
		t.Errorf("nowhere: %q, %v, want none", got, err)
	}
}
