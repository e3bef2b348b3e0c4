package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/runtime"
)

// runningWatch follows the engine's events and records, per SUT, how many
// of its containers ran at once at most.
type runningWatch struct {
	prefix string
	mu     sync.Mutex
	sutOf  map[string]string          // container ID -> SUT
	up     map[string]map[string]bool // SUT -> running container IDs
	most   map[string]int
	starts int
	// sentinel is set when the sentinel container's event arrived: every
	// event before it has been seen.
	sentinel bool
}

// drain makes a sentinel container and waits for its event: the stream is
// ordered, so every event of what came before has been seen.
func (w *runningWatch) drain(t *testing.T, rt *runtime.Client, image string) {
	ctx := context.Background()
	c, err := rt.API().ContainerCreate(ctx, &container.Config{Image: image, Labels: map[string]string{testenv.LabelTest: "old-stack"}}, nil, nil, nil, w.prefix+"sentinel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.API().ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	testenv.Eventually(t, 30*time.Second, "the sentinel's event never arrived", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sentinel
	})
}

func watchRunning(t *testing.T, rt *runtime.Client, prefix string) *runningWatch {
	w := &runningWatch{prefix: prefix, sutOf: map[string]string{}, up: map[string]map[string]bool{}, most: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, errs := rt.API().Events(ctx, events.ListOptions{Filters: filters.NewArgs(filters.Arg("type", "container"))})
	// What runs already counts: the events only say what changes.
	running, err := rt.API().ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("name", prefix))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range running {
		w.see(events.Message{Action: events.ActionStart, Actor: events.Actor{ID: c.ID, Attributes: map[string]string{"name": strings.TrimPrefix(c.Names[0], "/")}}})
	}
	w.starts = 0
	go func() {
		for {
			select {
			case m := <-msgs:
				w.see(m)
			case <-errs:
				return
			}
		}
	}()
	return w
}

func (w *runningWatch) see(m events.Message) {
	if m.Actor.Attributes["name"] == w.prefix+"sentinel" {
		w.mu.Lock()
		w.sentinel = true
		w.mu.Unlock()
		return
	}
	name := strings.TrimSuffix(m.Actor.Attributes["name"], runtime.AsideSuffix)
	sut, ok := strings.CutPrefix(name, w.prefix)
	if !ok || !strings.HasPrefix(sut, "dut") {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.up[sut] == nil {
		w.up[sut] = map[string]bool{}
	}
	switch m.Action {
	case events.ActionStart:
		w.up[sut][m.Actor.ID] = true
		w.starts++
	case events.ActionDie, events.ActionDestroy:
		delete(w.up[sut], m.Actor.ID)
	}
	w.most[sut] = max(w.most[sut], len(w.up[sut]))
}

func (w *runningWatch) twice() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for sut, n := range w.most {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s (%d at once)", sut, n))
		}
	}
	return out
}

// oldStackLab writes a lab repository of the old docker-compose stack: 60
// SUTs with three files each, four pairs sharing a device_ip, a stray
// .DS_Store, a compose file with version:, a master service on the Docker
// socket, a relative data mount and a named volume.
func oldStackLab(t *testing.T, dir, name, project, image, subnet string) {
	files := map[string]string{
		"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nadopt:\n  compose_project: %[2]s\nagents:\n  image: {name: %[3]s}\n  networks: {lab: {}}\n"+
			"  healthcheck: {test: [CMD, /opt/labsync/labsync-agent, healthcheck], interval: 1s, start_period: 5s}\n"+
			"  update: {parallelism: 8, min_uptime: 200ms}\n", name, project, image),
		"docker-compose.yaml": fmt.Sprintf(`version: "2.4"
services:
  redis:
    image: %[1]s
    command: ["testflinger-server", "--listen", ":6379"]
    volumes:
      - data:/data
    networks: [lab]
  web:
    image: %[1]s
    command: ["testflinger-server", "--listen", ":8000"]
    volumes:
      - ./log:/var/log/web
  master:
    image: %[1]s
    command: ["testflinger-server", "--listen", ":9000"]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
volumes:
  data: {}
networks:
  lab:
    ipam:
      config:
        - subnet: %[2]s
`, image, subnet),
		"sut/.DS_Store": "\x00\x00\x00\x01Bud1",
	}
	for i := 1; i <= 60; i++ {
		sut := fmt.Sprintf("dut%02d", i)
		ip := fmt.Sprintf("10.20.0.%d", i)
		if i <= 8 { // dut01/dut02, dut03/dut04, ... share a device
			ip = fmt.Sprintf("10.20.0.%d", (i+1)/2)
		}
		files["sut/"+sut+".conf"] = agentConfFor(sut)
		files["sut/"+sut+"_snappy.yaml"] = fmt.Sprintf("device_ip: %s\nagent_name: %s\n", ip, sut)
		files["sut/"+sut+".yaml"] = fmt.Sprintf("job_queue: %s\ntest_data:\n  test_cmds: uname -a\n", sut)
	}
	testenv.WriteFiles(t, dir, files)
}

// startOldAgent makes an agent container as the old master did: through
// the API, named after the SUT, its conf in place, no labsync labels.
func startOldAgent(ctx context.Context, rt *runtime.Client, name, sut, image, conf string) (string, error) {
	api := rt.API()
	path := "/data/testflinger-agent/sut/" + sut + ".conf"
	c, err := api.ContainerCreate(ctx, &container.Config{Image: image, Hostname: sut, Cmd: []string{"testflinger-agent", "-c", path},
		Labels: map[string]string{testenv.LabelTest: "old-stack"}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "always"}}, &network.NetworkingConfig{}, nil, name)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o644, Size: int64(len(conf))})
	_, _ = tw.Write([]byte(conf))
	_ = tw.Close()
	if err := api.CopyToContainer(ctx, c.ID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		return "", err
	}
	return c.ID, api.ContainerStart(ctx, c.ID, container.StartOptions{})
}

// A real lab of the old stack, adopted unchanged: its services run with
// docker-compose, its agents as the old master made them. apply --adopt
// takes every non-held agent and service over under labsync's labels with
// the old container names, leaves the held SUTs' containers untouched,
// keeps the volume's data, never runs two containers of one SUT at once,
// and a second apply plans nothing.
func TestAdoptTheOldStack(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a stack of 63 containers")
	}
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		if testenv.CI() {
			t.Fatal("docker-compose required under CI=true (scripts/test-setup.sh installs it)")
		}
		t.Skip("no docker-compose")
	}
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	project := strings.ReplaceAll(name, "-", "")
	testenv.CleanupLab(t, rt, name)
	dir := t.TempDir()
	// A fixed subnet, as the old stack's macvlan had: labsync cannot make a
	// second network on it, so it takes the old one over.
	subnet := fmt.Sprintf("10.%d.%d.0/24", 200+mrand.IntN(50), mrand.IntN(250))
	oldStackLab(t, dir, name, project, image, subnet)
	ctx := context.Background()

	// The old stack, as it ran.
	composeCmd := func(args ...string) error {
		cmd := exec.Command(compose, append([]string{"-p", project, "-f", filepath.Join(dir, "docker-compose.yaml")}, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("docker-compose %v: %v\n%s", args, err, out)
		}
		return nil
	}
	// labsync's containers first: they hold the adopted network and volume,
	// which the compose project's down then removes.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		testenv.RemoveLab(ctx, rt, name)
		_ = composeCmd("down", "-v", "--remove-orphans")
	})
	t.Cleanup(func() {
		cs, _ := rt.API().ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name+"-dut"))})
		for _, c := range cs {
			if c.Labels[testenv.LabelTest] == "old-stack" {
				_ = rt.API().ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
			}
		}
	})
	if err := composeCmd("up", "-d"); err != nil {
		t.Fatal(err)
	}
	redisOld := project + "_redis_1"
	var seed bytes.Buffer
	tw := tar.NewWriter(&seed)
	_ = tw.WriteHeader(&tar.Header{Name: "data/seed.txt", Mode: 0o644, Size: 5})
	_, _ = tw.Write([]byte("kept\n"))
	_ = tw.Close()
	if err := rt.API().CopyToContainer(ctx, redisOld, "/", &seed, container.CopyToContainerOptions{}); err != nil {
		t.Fatalf("seed the volume: %v", err)
	}
	oldIDs := map[string]string{}
	for i := 1; i <= 60; i++ {
		sut := fmt.Sprintf("dut%02d", i)
		conf, _ := os.ReadFile(filepath.Join(dir, "sut", sut+".conf"))
		id, err := startOldAgent(ctx, rt, name+"-"+sut, sut, image, string(conf))
		if err != nil {
			t.Fatalf("old agent %s: %v", sut, err)
		}
		oldIDs[sut] = id
	}

	// Without --adopt the plan names what is in the way.
	dataDir := t.TempDir()
	agentBin := testenv.AgentBinary(t)
	common := []string{"--allow-docker-socket", "master", "--data-dir", dataDir}
	var out testenv.SyncBuffer
	err = run(ctx, append(append([]string{"plan"}, common...), dir), &out, &out)
	if !errors.As(err, &exitError{}) || !strings.Contains(out.String(), "Blocked (") || !strings.Contains(out.String(), "--adopt") {
		t.Fatalf("plan without --adopt: %v\n%s", err, out.String())
	}

	// The takeover.
	watch := watchRunning(t, rt, name+"-")
	out = testenv.SyncBuffer{}
	start := time.Now()
	err = run(ctx, append(append([]string{"apply", "--adopt", "--agent-binary", agentBin, "--stop-timeout", "3s"}, common...), dir), &out, &out)
	took := time.Since(start)
	text := out.String()
	summary := ""
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "Plan: ") {
			summary = line
		}
	}
	t.Logf("apply --adopt: %s; took %s", summary, took.Round(100*time.Millisecond))
	if !errors.As(err, &exitError{}) { // the held SUTs make it exit 1
		t.Fatalf("apply --adopt: %v\n%s", err, text)
	}
	for _, want := range []string{"Held (8)", "sut/dut01_snappy.yaml:1", "service 'master' mounts the Docker socket", "stray file ignored"} {
		if !strings.Contains(text, want) {
			t.Errorf("apply output lacks %q", want)
		}
	}
	if strings.Contains(text, "failed") || strings.Contains(text, "rolled-back") {
		t.Fatalf("apply --adopt had failures:\n%s", text)
	}

	// Every non-held agent runs under labsync's labels with its old name;
	// the held SUTs keep their old containers.
	cs, err := rt.API().ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name+"-"))})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]container.Summary{}
	for _, c := range cs {
		byName[strings.TrimPrefix(c.Names[0], "/")] = c
	}
	for i := 1; i <= 60; i++ {
		sut := fmt.Sprintf("dut%02d", i)
		c, ok := byName[name+"-"+sut]
		switch {
		case !ok:
			t.Errorf("%s has no container", sut)
		case i <= 8 && (c.ID != oldIDs[sut] || c.State != "running"):
			t.Errorf("held %s: container %s %s, want its old one running", sut, c.ID[:12], c.State)
		case i > 8 && (c.Labels[runtime.LabelManaged] != "true" || c.ID == oldIDs[sut] || c.State != "running"):
			t.Errorf("%s not taken over: %s %s labels %v", sut, c.ID[:12], c.State, c.Labels[runtime.LabelManaged])
		}
	}
	for _, svc := range []string{"redis", "web", "master"} {
		if c, ok := byName[name+"-"+svc]; !ok || c.Labels[runtime.LabelManaged] != "true" || c.State != "running" {
			t.Errorf("service %s not taken over: %+v", svc, c.State)
		}
	}
	if old, err := rt.API().ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", runtime.LabelComposeProject+"="+project))}); err != nil || len(old) != 0 {
		t.Errorf("the compose project's containers are still there: %d, %v", len(old), err)
	}
	data, err := testenv.ReadContainerFile(ctx, rt, name+"-redis", "/data/seed.txt")
	if err != nil || string(data) != "kept\n" {
		t.Errorf("the volume's data: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "labs", name, "log")); err != nil {
		t.Errorf("the runtime-data folder was not made: %v", err)
	}
	watch.drain(t, rt, image)
	if twice := watch.twice(); len(twice) > 0 {
		t.Errorf("two containers of one SUT ran at once: %v", twice)
	}
	watch.mu.Lock()
	if watch.starts < 52 {
		t.Errorf("the event watch saw %d starts; want one per taken-over agent", watch.starts)
	}
	watch.mu.Unlock()

	// A second apply plans nothing.
	out = testenv.SyncBuffer{}
	err = run(ctx, append(append([]string{"apply", "--agent-binary", agentBin}, common...), dir), &out, &out)
	if !strings.Contains(out.String(), "No actions: what is held or blocked") || strings.Contains(out.String(), "Blocked") || !errors.As(err, &exitError{}) {
		t.Errorf("second apply: %v\n%s", err, out.String())
	}

	// A held pair fixed later: its old containers are in the way until
	// --adopt takes them over too.
	testenv.WriteFiles(t, dir, map[string]string{"sut/dut02_snappy.yaml": "device_ip: 10.20.0.102\nagent_name: dut02\n"})
	out = testenv.SyncBuffer{}
	err = run(ctx, append(append([]string{"apply", "--agent-binary", agentBin}, common...), dir), &out, &out)
	if !strings.Contains(out.String(), "Blocked (2)") || !errors.As(err, &exitError{}) {
		t.Errorf("apply after the fix, without --adopt: %v\n%s", err, out.String())
	}
	out = testenv.SyncBuffer{}
	err = run(ctx, append(append([]string{"apply", "--adopt", "--agent-binary", agentBin, "--stop-timeout", "3s"}, common...), dir), &out, &out)
	if !errors.As(err, &exitError{}) || !strings.Contains(out.String(), "2 to take over") || !strings.Contains(out.String(), "2 ok") {
		t.Errorf("apply --adopt after the fix: %v\n%s", err, out.String())
	}
}
