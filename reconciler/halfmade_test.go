package reconciler_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// spec returns the compiled spec of object name at the lab's files now.
func (l *liveLab) spec(name string) *lab.ContainerSpec {
	l.t.Helper()
	lb, err := lab.Load(os.DirFS(l.dir), lab.LoadOptions{DefaultName: l.name})
	if err != nil {
		l.t.Fatal(err)
	}
	d := lab.Compile(lb, lab.CompileOptions{})
	for i := range d.Containers {
		if d.Containers[i].Name == name {
			return &d.Containers[i]
		}
	}
	l.t.Fatalf("no container %s in the lab", name)
	return nil
}

// halfMade makes the container of spec as runtime.CreateContainer's first
// step does (labels with the final spec hash, first network) and stops
// there, as a crash before its files are copied in leaves it.
func (l *liveLab) halfMade(ctx context.Context, spec *lab.ContainerSpec) string {
	l.t.Helper()
	cfg := &container.Config{Image: spec.Image, Cmd: spec.Command, Entrypoint: spec.Entrypoint, Labels: runtime.ManagedLabels(spec, l.name, "crashed")}
	host := &container.HostConfig{}
	if len(spec.Networks) > 0 {
		host.NetworkMode = container.NetworkMode(spec.Networks[0].Network)
	}
	resp, err := l.rt.API().ContainerCreate(ctx, cfg, host, nil, nil, spec.ContainerName)
	if err != nil {
		l.t.Fatal(err)
	}
	return resp.ID
}

// A container left half-made by a crash (labelled with its final spec
// hash, but without its files) is not in sync: the next apply replaces it,
// and the agent comes up with its conf.
func TestHalfMadeContainerIsReplaced(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// crash leaves the host as a crash would, and returns the ID of
		// the half-made container.
		crash func(ctx context.Context, l *liveLab) string
	}{
		{name: "create", crash: func(ctx context.Context, l *liveLab) string {
			if err := l.rt.RemoveContainer(ctx, l.containers(ctx)[l.name+"-alpha"].ID); err != nil {
				t.Fatal(err)
			}
			return l.halfMade(ctx, l.spec("alpha"))
		}},
		{name: "recreate", crash: func(ctx context.Context, l *liveLab) string {
			// Stopped while making the new container of a recreate: the
			// old one is set aside.
			old := l.containers(ctx)[l.name+"-alpha"]
			l.write("sut/alpha.conf", strings.Replace(agentConf("alpha"), "polling_interval: 30", "polling_interval: 7", 1))
			if err := l.rt.StopContainer(ctx, old.ID, time.Second); err != nil {
				t.Fatal(err)
			}
			if err := l.rt.RenameContainer(ctx, old.ID, l.name+"-alpha"+runtime.AsideSuffix); err != nil {
				t.Fatal(err)
			}
			return l.halfMade(ctx, l.spec("alpha"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := newLiveLab(t, "alpha")
			l.applyOK(ctx)
			half := tc.crash(ctx, l)

			p := l.applyOK(ctx)
			for _, a := range p.Actions {
				if a.Object == "alpha" && (a.Kind == "start" || a.Kind == "finish-recreate") {
					t.Errorf("plan %s alpha: a half-made container is treated as complete (%v)", a.Kind, a.Reasons)
				}
			}
			cs := l.containers(ctx)
			c, ok := cs[l.name+"-alpha"]
			if !ok || c.ID == half || c.State != "running" {
				t.Fatalf("alpha = %s %s (half-made %s), want a new container running", c.ID, c.State, half)
			}
			got, err := testenv.ReadContainerFile(ctx, l.rt, c.ID, "/data/testflinger-agent/sut/alpha.conf")
			if err != nil {
				t.Fatalf("alpha has no conf: %v", err)
			}
			want, _ := os.ReadFile(l.dir + "/sut/alpha.conf")
			if string(got) != string(want) {
				t.Errorf("alpha.conf = %q, want %q", got, want)
			}
			if len(cs) != 2 {
				t.Errorf("%d containers, want api and alpha: %v", len(cs), cs)
			}
			if p := l.plan(ctx); !p.Empty() {
				t.Errorf("a second plan has actions: %v", actionsOf(p))
			}
		})
	}
}
