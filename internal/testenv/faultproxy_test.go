package testenv_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/runtime"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// newContainer creates (not starts) a labelled container of this test
// through rt, removed when the test ends through real.
func newContainer(t *testing.T, rt, real *runtime.Client, image, name string, cmd ...string) (string, error) {
	t.Helper()
	t.Cleanup(func() {
		_ = real.API().ContainerRemove(context.Background(), name, container.RemoveOptions{Force: true})
	})
	c, err := rt.API().ContainerCreate(context.Background(), &container.Config{Image: image, Cmd: cmd, Labels: map[string]string{testenv.LabelTest: "faultproxy"}}, nil, nil, nil, name)
	return c.ID, err
}

func exists(t *testing.T, real *runtime.Client, name string) bool {
	t.Helper()
	_, err := real.API().ContainerInspect(context.Background(), name)
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// Each fault does what it says to the call it is given, and the client
// sees an error from the engine or from its connection.
func TestFaultProxyFaults(t *testing.T) {
	t.Parallel()
	real := testenv.Docker(t)
	image := testenv.StandinImage(t, real)
	create := testenv.Match{Method: http.MethodPost, Path: `^/containers/create$`}
	for _, tc := range []struct {
		kind     testenv.FaultKind
		wantErr  bool
		executed bool
	}{
		{testenv.FaultFail, true, false},
		{testenv.FaultFailAfter, true, true},
		{testenv.FaultDrop, true, false},
		{testenv.FaultDropAfter, true, true},
		{testenv.FaultDelay, false, true},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			p := testenv.NewFaultProxy(t, 1, testenv.Fault{Match: create, Kind: tc.kind, Rate: 1, Delay: 50 * time.Millisecond})
			rt := p.Client(t)
			name := testenv.Name(t)
			_, err := newContainer(t, rt, real, image, name)
			if (err != nil) != tc.wantErr {
				t.Fatalf("create: err = %v, want an error: %v", err, tc.wantErr)
			}
			if tc.kind == testenv.FaultFail && !strings.Contains(err.Error(), "fault injected") {
				t.Errorf("error = %v, want the proxy's message", err)
			}
			if got := exists(t, real, name); got != tc.executed {
				t.Errorf("container exists = %v, want %v", got, tc.executed)
			}
			if p.Injected() != 1 {
				t.Errorf("%d faults injected, want 1", p.Injected())
			}
			// Reads and other writes pass.
			if err := rt.Ping(context.Background()); err != nil {
				t.Errorf("ping through the proxy: %v", err)
			}
		})
	}
}

// The event stream and a hijacked attach pass through the proxy.
func TestFaultProxyPassesStreams(t *testing.T) {
	t.Parallel()
	real := testenv.Docker(t)
	image := testenv.StandinImage(t, real)
	p := testenv.NewFaultProxy(t, 1)
	rt := p.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := testenv.Name(t)
	msgs, errs := rt.API().Events(ctx, events.ListOptions{Filters: filters.NewArgs(filters.Arg("container", name), filters.Arg("event", "die"))})

	// With no -c the stand-in agent says so on stderr and exits.
	id, err := newContainer(t, rt, real, image, name, "testflinger-agent")
	if err != nil {
		t.Fatal(err)
	}
	att, err := rt.API().ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("attach through the proxy: %v", err)
	}
	defer att.Close()
	if err := rt.API().ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, att.Reader); err != nil {
		t.Fatalf("read attached output: %v", err)
	}
	if !strings.Contains(out.String(), "no config file given") {
		t.Errorf("attached output = %q", out.String())
	}
	select {
	case m := <-msgs:
		if m.Actor.ID != id {
			t.Errorf("event of %s, want %s", m.Actor.ID, id)
		}
	case err := <-errs:
		t.Fatalf("event stream through the proxy: %v", err)
	case <-ctx.Done():
		t.Fatal("no die event through the proxy")
	}
}

// A held call waits until it is released; one whose client goes away is
// dropped and never reaches the engine. Held after the engine, the call is
// done but its answer never arrives.
func TestFaultProxyHold(t *testing.T) {
	t.Parallel()
	real := testenv.Docker(t)
	image := testenv.StandinImage(t, real)
	p := testenv.NewFaultProxy(t, 1)
	rt := p.Client(t)
	create := testenv.Match{Method: http.MethodPost, Path: `^/containers/create$`, Query: `name=` + strings.ToLower(t.Name())}

	h := p.Hold(create, 2, false)
	first, second := testenv.Name(t), testenv.Name(t)
	if _, err := newContainer(t, rt, real, image, first); err != nil {
		t.Fatalf("first create: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := newContainer(t, rt, real, image, second)
		done <- err
	}()
	<-h.Held
	if exists(t, real, second) {
		t.Fatal("the held create reached the engine")
	}
	h.Release()
	if err := <-done; err != nil {
		t.Fatalf("released create: %v", err)
	}
	if !exists(t, real, second) || h.Dropped() {
		t.Fatal("the released create was not done")
	}

	for _, after := range []bool{false, true} {
		h := p.Hold(create, 1, after)
		name := testenv.Name(t)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(func() {
			_ = real.API().ContainerRemove(context.Background(), name, container.RemoveOptions{Force: true})
		})
		done := make(chan error, 1)
		go func() {
			_, err := rt.API().ContainerCreate(ctx, &container.Config{Image: image, Labels: map[string]string{testenv.LabelTest: "faultproxy"}}, nil, nil, nil, name)
			done <- err
		}()
		<-h.Held
		cancel()
		<-h.Done
		if !h.Dropped() {
			t.Errorf("after %v: the call was not dropped", after)
		}
		if err := <-done; err == nil {
			t.Errorf("after %v: the dropped create succeeded", after)
		}
		if got := exists(t, real, name); got != after {
			t.Errorf("held after the engine %v: container exists = %v", after, got)
		}
	}
}

// The same seed gives the same faults to the same calls.
func TestFaultProxySeedIsReproducible(t *testing.T) {
	t.Parallel()
	testenv.Docker(t)
	results := func(seed uint64) string {
		p := testenv.NewFaultProxy(t, seed, testenv.Fault{Match: testenv.Match{Path: `^/_ping$`}, Kind: testenv.FaultFail, Rate: 0.5})
		c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", strings.TrimPrefix(p.Host(), "unix://"))
		}}}
		var b strings.Builder
		for range 40 {
			resp, err := c.Get("http://docker/v1.41/_ping")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			b.WriteString(resp.Status[:1])
		}
		return b.String()
	}
	a, b := results(7), results(7)
	if a != b {
		t.Errorf("seed 7 gave %s, then %s", a, b)
	}
	if !strings.Contains(a, "5") || !strings.Contains(a, "2") {
		t.Errorf("a rate of 0.5 gave %s", a)
	}
}
