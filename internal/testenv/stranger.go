package testenv

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/runtime"
)

// Stranger is a running container a test made without labsync's labels,
// under a name like a lab's: labsync must never touch it.
type Stranger struct {
	ID, Name string
	started  string
}

// StartStranger starts a Stranger named name from image, with restart
// policy always, removed when the test ends.
func StartStranger(t testing.TB, rt *runtime.Client, image, name string) Stranger {
	t.Helper()
	ctx := context.Background()
	c, err := rt.API().ContainerCreate(ctx, &container.Config{Image: image, Cmd: []string{"testflinger-server", "--listen", ":9"}, Labels: map[string]string{LabelTest: "stranger"}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "always"}}, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rt.API().ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	})
	if err := rt.API().ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := rt.API().ContainerInspect(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	return Stranger{ID: c.ID, Name: name, started: info.State.StartedAt}
}

// Check fails the test unless the stranger is as it was made: same
// container, same name, running since it was started, policy always.
func (s Stranger) Check(t testing.TB, rt *runtime.Client) {
	t.Helper()
	info, err := rt.API().ContainerInspect(context.Background(), s.ID)
	if err != nil {
		t.Errorf("stranger %s is gone: %v", s.Name, err)
		return
	}
	if info.Name != "/"+s.Name || !info.State.Running || info.State.StartedAt != s.started || info.HostConfig.RestartPolicy.Name != "always" {
		t.Errorf("stranger %s was touched: name %s, running %v, started %s (was %s), restart policy %s",
			s.Name, info.Name, info.State.Running, info.State.StartedAt, s.started, info.HostConfig.RestartPolicy.Name)
	}
}
