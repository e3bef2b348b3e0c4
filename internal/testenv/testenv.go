// Package testenv gives integration tests a Docker engine, unique names,
// the stand-in images and polling helpers. Only tests import it.
//
// Outside CI a missing engine skips a test with a clear message; with
// CI=true it fails it, so CI never passes by skipping.
package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	cerrdefs "github.com/containerd/errdefs"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/labsync/labsync/runtime"
)

// LabelTest marks every object a test creates itself (outside labsync).
const LabelTest = "io.labsync.test"

// CI reports whether the tests run in CI, where nothing may skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Docker returns a client of the local engine, or skips (fails under CI)
// when there is none.
func Docker(t testing.TB) *runtime.Client {
	t.Helper()
	rt, err := runtime.New(runtime.Options{})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = rt.Ping(ctx)
		cancel()
	}
	if err != nil {
		if CI() {
			t.Fatalf("Docker engine required under CI=true: %v", err)
		}
		t.Skipf("no Docker engine (%v); set CI=true to make this a failure", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// Name returns a name for an object of this test: the test's name,
// lower-cased, plus a random suffix.
func Name(t testing.TB) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	base := strings.ToLower(t.Name())
	var out strings.Builder
	for _, r := range base {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			out.WriteRune(r)
		} else {
			out.WriteRune('-')
		}
	}
	s := strings.Trim(out.String(), "-")
	if len(s) > 40 {
		s = s[len(s)-40:]
	}
	return strings.Trim(s, "-") + "-" + hex.EncodeToString(b[:])
}

// CleanupLab removes, when the test ends, every container, network and
// volume labelled for labName: the lab is the test's own.
func CleanupLab(t testing.TB, rt *runtime.Client, labName string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		RemoveLab(ctx, rt, labName)
	})
}

// RemoveLab removes everything labelled for labName.
func RemoveLab(ctx context.Context, rt *runtime.Client, labName string) {
	api := rt.API()
	f := filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+labName))
	cs, _ := api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	for _, c := range cs {
		_ = api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	ns, _ := api.NetworkList(ctx, network.ListOptions{Filters: f})
	for _, n := range ns {
		// The endpoints of containers just removed may linger a moment.
		for try := 0; try < 50; try++ {
			err := api.NetworkRemove(ctx, n.ID)
			if err == nil || cerrdefs.IsNotFound(err) || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	vs, _ := api.VolumeList(ctx, volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		_ = api.VolumeRemove(ctx, v.Name, true)
	}
	ims, _ := api.ImageList(ctx, image.ListOptions{Filters: f})
	for _, im := range ims {
		_, _ = api.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true})
	}
}

// Eventually polls cond every 100ms until it returns true or timeout
// passes, then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		<-tick.C
	}
}

var (
	standinMu sync.Mutex
	// standinTags maps the Dockerfile of each stand-in image built by this
	// process to its tag.
	standinTags = map[string]string{}
)

// RepoRoot returns the repository's top folder.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// StandinBinary builds the stand-in agent (testdata/standin) as a static
// binary and returns its path.
func StandinBinary(t testing.TB) string {
	t.Helper()
	return buildBinary(t, "standin", "./testdata/standin")
}

// AgentBinary builds labsync-agent as a static binary.
func AgentBinary(t testing.TB) string {
	t.Helper()
	return buildBinary(t, "labsync-agent", "./cmd/labsync-agent")
}

// LabsyncBinary builds the labsync command, for tests that run it as a
// process of its own (to kill it, say).
func LabsyncBinary(t testing.TB) string {
	t.Helper()
	return buildBinary(t, "labsync", "./cmd/labsync")
}

var buildMu sync.Mutex

func buildBinary(t testing.TB, name, pkg string) string {
	t.Helper()
	out := filepath.Join(os.TempDir(), fmt.Sprintf("labsync-test-%s-%d", name, os.Getpid()))
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// StandinImage builds the stand-in image (FROM scratch, the stand-in as
// testflinger-agent and testflinger-server, with its own labsync-agent)
// once per test binary and returns its tag. The tag is the content's
// digest, so runs share it.
func StandinImage(t testing.TB, rt *runtime.Client) string {
	t.Helper()
	return standinImage(t, rt, "standin", "Dockerfile", map[string]string{"standin": StandinBinary(t), "labsync-agent": AgentBinary(t)})
}

// BareStandinImage builds an agent image without labsync-agent: FROM
// scratch with only the stand-in as testflinger-agent and
// testflinger-server, like an agent image built from the old stack's
// Dockerfile. An agent runs in it under the default command only when
// labsync gives the container its labsync-agent.
func BareStandinImage(t testing.TB, rt *runtime.Client) string {
	t.Helper()
	return standinImage(t, rt, "standin-bare", "bare.Dockerfile", map[string]string{"standin": StandinBinary(t)})
}

// standinImage builds testdata/standin/<dockerfile> with the given files
// (name in the context → path here) once per test binary, tagged
// labsync-test/<repo>.
func standinImage(t testing.TB, rt *runtime.Client, repo, dockerfile string, files map[string]string) string {
	t.Helper()
	standinMu.Lock()
	defer standinMu.Unlock()
	if tag := standinTags[dockerfile]; tag != "" {
		return tag
	}
	df, err := os.ReadFile(filepath.Join(RepoRoot(), "testdata", "standin", dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	buildContext := map[string][]byte{"Dockerfile": df}
	sum := sha256.New()
	sum.Write(df)
	for _, name := range []string{"standin", "labsync-agent"} {
		if files[name] == "" {
			continue
		}
		data, err := os.ReadFile(files[name])
		if err != nil {
			t.Fatal(err)
		}
		buildContext[name] = data
		sum.Write(data)
	}
	// One image per test process: Main removes it when the process ends,
	// so packages tested in parallel never remove each other's image.
	tag := fmt.Sprintf("labsync-test/%s:%s-%d", repo, hex.EncodeToString(sum.Sum(nil))[:12], os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range buildContext {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data))})
		_, _ = tw.Write(data)
	}
	_ = tw.Close()
	resp, err := rt.API().ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true, Version: build.BuilderV1, Labels: map[string]string{LabelTest: processLabel()}})
	if err != nil {
		t.Fatalf("build stand-in image: %v", err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	if err := jsonmessage.DisplayJSONMessagesStream(resp.Body, &out, 0, false, nil); err != nil {
		t.Fatalf("build stand-in image: %v\n%s", err, out.String())
	}
	standinTags[dockerfile] = tag
	return tag
}

func processLabel() string { return fmt.Sprintf("standin-%d", os.Getpid()) }

// Main runs the tests of a package, then removes the images this process
// built. Use it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	standinMu.Lock()
	built := len(standinTags) > 0
	standinMu.Unlock()
	if built {
		if rt, err := runtime.New(runtime.Options{}); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			ims, _ := rt.API().ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelTest+"="+processLabel()))})
			for _, im := range ims {
				_, _ = rt.API().ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true})
			}
			cancel()
			rt.Close()
		}
	}
	for _, name := range []string{"standin", "labsync-agent", "labsync"} {
		_ = os.Remove(filepath.Join(os.TempDir(), fmt.Sprintf("labsync-test-%s-%d", name, os.Getpid())))
	}
	os.Exit(code)
}

// WriteFiles writes files (relative path → content) under dir.
func WriteFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// ReadContainerFile reads one file out of a container through the archive
// API.
func ReadContainerFile(ctx context.Context, rt *runtime.Client, id, path string) ([]byte, error) {
	rc, _, err := rt.API().CopyFromContainer(ctx, id, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return nil, err
	}
	return io.ReadAll(tr)
}

// Golden compares got with the file at path, or rewrites the file when
// update is set (go test -update), for review in the diff.
func Golden(t testing.TB, path, got string, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// SyncBuffer is a bytes.Buffer safe for writers on several goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
