package runtime_test

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/runtime"
)

// A stop timeout of 0 means the default grace (here the container's own
// stop timeout, 2 s), and a fraction of a second is rounded up: neither
// kills at once. The stand-in ignores SIGTERM, so it ends only when the
// grace is over. A negative timeout is refused.
func TestStopTimeoutGivesGrace(t *testing.T) {
	t.Parallel()
	rt := testenv.Docker(t)
	image := testenv.StandinImage(t, rt)
	ctx := context.Background()
	api := rt.API()
	cases := []struct {
		name    string
		timeout time.Duration
		atLeast time.Duration
	}{
		{name: "zero", timeout: 0, atLeast: 1500 * time.Millisecond},
		{name: "fraction", timeout: 300 * time.Millisecond, atLeast: 800 * time.Millisecond},
		{name: "negative", timeout: -time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			grace := 2
			resp, err := api.ContainerCreate(ctx, &container.Config{Image: image, Cmd: []string{"testflinger-agent", "-c", "/agent.conf"},
				Env: []string{"STANDIN_IGNORE_TERM=1"}, StopTimeout: &grace, Labels: map[string]string{testenv.LabelTest: "stop"}},
				nil, nil, nil, testenv.Name(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = api.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}) })
			conf := []byte("agent_id: stop\npolling_interval: 30\n")
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			_ = tw.WriteHeader(&tar.Header{Name: "agent.conf", Mode: 0o644, Size: int64(len(conf))})
			_, _ = tw.Write(conf)
			_ = tw.Close()
			if err := api.CopyToContainer(ctx, resp.ID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := rt.StartContainer(ctx, resp.ID); err != nil {
				t.Fatal(err)
			}
			if err := rt.WaitRunning(ctx, resp.ID, runtime.WaitOptions{MinUptime: 300 * time.Millisecond, Timeout: 30 * time.Second}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = rt.StopContainer(ctx, resp.ID, tc.timeout)
			took := time.Since(start)
			if tc.timeout < 0 {
				info, _ := api.ContainerInspect(ctx, resp.ID)
				if err == nil || !info.State.Running {
					t.Errorf("negative timeout: err %v, running %v; want an error and the container left running", err, info.State.Running)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if took < tc.atLeast {
				t.Errorf("stopped after %s, want a grace of at least %s", took, tc.atLeast)
			}
		})
	}
}
