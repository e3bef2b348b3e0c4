package reconciler_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	testenv.Golden(t, filepath.Join("testdata", name), got, *update)
}

// planLab is the lab the planner cases start from: four agents and two
// services, one with a build.
func planLab(agents ...string) fstest.MapFS {
	fsys := fstest.MapFS{
		"lab.yaml": {Data: []byte("name: plan\nagents:\n  image:\n    name: agent:1\n")},
		"docker-compose.yaml": {Data: []byte(`services:
  redis:
    image: redis:7
    volumes: [data:/data]
  api:
    build: ./api
    depends_on:
      redis: {condition: service_started}
networks:
  lab: {}
volumes:
  data: {}
`)},
		"api/Dockerfile": {Data: []byte("FROM scratch\n")},
	}
	for _, a := range agents {
		fsys["sut/"+a+".conf"] = &fstest.MapFile{Data: []byte(agentConf(a))}
	}
	return fsys
}

func compile(t *testing.T, fsys fstest.MapFS) *lab.Desired {
	t.Helper()
	l, err := lab.Load(fsys, lab.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return lab.Compile(l, lab.CompileOptions{Revision: "abc123"})
}

// observedFrom returns what a host looks like right after d was applied.
func observedFrom(d *lab.Desired) *runtime.Observed {
	o := &runtime.Observed{Images: map[string]string{}}
	for _, c := range d.Containers {
		o.Containers = append(o.Containers, runtime.ObservedContainer{
			ID: "id-" + c.Name, Name: c.ContainerName, Kind: c.Kind, Object: c.Name, Hash: c.Hash, Fields: c.Fields,
			Revision: d.Revision, State: "running", Status: "Up 2 hours", Image: c.Image, ImageID: "sha256:id-" + c.Image, Device: c.Device,
		})
		o.Images[c.Image] = "sha256:id-" + c.Image
	}
	for _, n := range d.Networks {
		o.Networks = append(o.Networks, runtime.ObservedNetwork{ID: "net-" + n.Name, Name: n.Name, Object: n.Key, Hash: n.Hash})
	}
	for _, v := range d.Volumes {
		o.Volumes = append(o.Volumes, runtime.ObservedVolume{Name: v.Name, Object: v.Key, Hash: v.Hash})
	}
	return o
}

// withDevices gives each agent of planLab a device address.
func withDevices(fsys fstest.MapFS) fstest.MapFS {
	for i, a := range []string{"alpha", "beta", "gamma", "delta"} {
		if _, ok := fsys["sut/"+a+".conf"]; ok {
			fsys["sut/"+a+"_snappy.yaml"] = &fstest.MapFile{Data: []byte(fmt.Sprintf("device_ip: 10.0.0.%d\n", i+1))}
		}
	}
	return fsys
}

// oneService is planLab without the api service.
func oneService(fsys fstest.MapFS) fstest.MapFS {
	fsys["docker-compose.yaml"] = &fstest.MapFile{Data: []byte(`services:
  redis:
    image: redis:7
    volumes: [data:/data]
networks:
  lab: {}
volumes:
  data: {}
`)}
	delete(fsys, "api/Dockerfile")
	return fsys
}

// quietBeta is planLab with a change to beta's conf.
func quietBeta(agents ...string) fstest.MapFS {
	fsys := planLab(agents...)
	fsys["sut/beta.conf"].Data = []byte(agentConf("beta") + "logging_quiet: true\n")
	return fsys
}

// specOf returns the spec hash and fields of object in fsys.
func specOf(t *testing.T, fsys fstest.MapFS, object string) (string, map[string]string) {
	t.Helper()
	for _, c := range compile(t, fsys).Containers {
		if c.Name == object {
			return c.Hash, c.Fields
		}
	}
	t.Fatalf("no container %s", object)
	return "", nil
}

func find(o *runtime.Observed, object string) *runtime.ObservedContainer {
	for i := range o.Containers {
		if o.Containers[i].Object == object {
			return &o.Containers[i]
		}
	}
	return nil
}

func TestPlanGolden(t *testing.T) {
	four := []string{"alpha", "beta", "delta", "gamma"}
	cases := []struct {
		name    string
		desired func(t *testing.T) *lab.Desired
		// observed starts from the host after applying base, then changes.
		base    func(t *testing.T) *lab.Desired
		observe func(o *runtime.Observed)
		opts    reconciler.PlanOptions
	}{
		{name: "create", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab(four...)) },
			observe: func(o *runtime.Observed) { *o = runtime.Observed{Images: map[string]string{}} }},
		{name: "unchanged", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab(four...)) }},
		{name: "changed", desired: func(t *testing.T) *lab.Desired {
			fsys := planLab(four...)
			fsys["sut/beta.conf"].Data = []byte(strings.Replace(agentConf("beta"), "polling_interval: 30", "polling_interval: 60\nlogging_level: DEBUG", 1))
			fsys["sut/gamma.lab.yaml"] = &fstest.MapFile{Data: []byte("image: agent:2\nenv: {DEBUG: \"1\"}\n")}
			fsys["api/Dockerfile"].Data = []byte("FROM scratch\nCOPY . /\n")
			return compile(t, fsys)
		}},
		{name: "stopped", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab(four...)) },
			observe: func(o *runtime.Observed) {
				c := find(o, "delta")
				c.State, c.Status = "exited", "Exited (137) 5 minutes ago"
				find(o, "beta").Health = "unhealthy"
				find(o, "beta").Status = "Up 3 hours (unhealthy)"
			}},
		{name: "orphan", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab("alpha", "beta", "delta")) }},
		{name: "prune-guard", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab("alpha")) }},
		{name: "prune-guard-forced", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab("alpha")) },
			opts: reconciler.PlanOptions{ForcePrune: true}},
		{name: "prune-guard-empty-lab", desired: func(t *testing.T) *lab.Desired {
			return compile(t, fstest.MapFS{"lab.yaml": {Data: []byte("name: plan\n")}})
		}},
		{name: "prune-guard-services", desired: func(t *testing.T) *lab.Desired {
			// The compose file is deleted: the agents stay, the stack goes.
			fsys := planLab(four...)
			delete(fsys, "docker-compose.yaml")
			return compile(t, fsys)
		}},
		{name: "prune-guard-last-service", desired: func(t *testing.T) *lab.Desired {
			fsys := planLab(four...)
			delete(fsys, "docker-compose.yaml")
			fsys["lab.yaml"].Data = append(fsys["lab.yaml"].Data, []byte("prune:\n  max_fraction: 1\n")...)
			return compile(t, fsys)
		}, base: func(t *testing.T) *lab.Desired {
			return compile(t, oneService(planLab("alpha", "beta", "delta", "gamma")))
		}},
		{name: "orphan-service", desired: func(t *testing.T) *lab.Desired { return compile(t, oneService(planLab(four...))) }},
		{name: "prune-disabled", desired: func(t *testing.T) *lab.Desired {
			fsys := planLab("alpha", "beta", "delta")
			fsys["lab.yaml"].Data = append(fsys["lab.yaml"].Data, []byte("prune:\n  enabled: false\n")...)
			return compile(t, fsys)
		}},
		{name: "interrupted-recreate", desired: func(t *testing.T) *lab.Desired {
			fsys := planLab(four...)
			fsys["sut/alpha.conf"].Data = []byte(agentConf("alpha") + "logging_quiet: true\n")
			return compile(t, fsys)
		}, observe: func(o *runtime.Observed) {
			c := find(o, "alpha")
			c.Name, c.Aside, c.State, c.Status = "alpha"+runtime.AsideSuffix, true, "exited", "Exited (0) 1 minute ago"
			b := find(o, "beta")
			b.Name, b.Aside, b.State = "beta"+runtime.AsideSuffix, true, "exited"
			d := *find(o, "delta")
			d.ID, d.Name, d.Aside = "id-delta-old", "delta"+runtime.AsideSuffix, true
			o.Containers = append(o.Containers, d)
		}},
		{name: "half-made", desired: func(t *testing.T) *lab.Desired { return compile(t, quietBeta(four...)) },
			observe: func(o *runtime.Observed) {
				// alpha: made, then the apply stopped before its files.
				a := find(o, "alpha")
				a.State, a.Status = "created", "Created"
				// beta: a recreate stopped while making the new container.
				b := find(o, "beta")
				newBeta := *b
				b.Name, b.Aside, b.State, b.Status = "beta"+runtime.AsideSuffix, true, "exited", "Exited (0) 1 minute ago"
				newBeta.ID, newBeta.State, newBeta.Status = "id-beta-new", "created", "Created"
				newBeta.Hash, newBeta.Fields = specOf(t, quietBeta(four...), "beta")
				// delta: in sync, next to a never-started duplicate.
				dup := *find(o, "delta")
				dup.ID, dup.Name, dup.State, dup.Status = "id-delta-dup", "lab-delta", "created", "Created"
				o.Containers = append(o.Containers, newBeta, dup)
			}},
		{name: "device-moves-to-new-agent", desired: func(t *testing.T) *lab.Desired {
			fsys := withDevices(planLab(four...))
			fsys["sut/gamma.lab.yaml"] = &fstest.MapFile{Data: []byte("enabled: false\n")}
			fsys["sut/epsilon.conf"] = &fstest.MapFile{Data: []byte(agentConf("epsilon"))}
			fsys["sut/epsilon_snappy.yaml"] = &fstest.MapFile{Data: []byte("device_ip: 10.0.0.3\n")}
			fsys["lab.yaml"].Data = append(fsys["lab.yaml"].Data, []byte("prune:\n  enabled: false\n")...)
			return compile(t, fsys)
		}, base: func(t *testing.T) *lab.Desired { return compile(t, withDevices(planLab(four...))) }},
		{name: "image-updated", desired: func(t *testing.T) *lab.Desired { return compile(t, planLab(four...)) },
			observe: func(o *runtime.Observed) { o.Images["redis:7"] = "sha256:id-redis:7-newer" }},
		{name: "renamed-and-missing-network", desired: func(t *testing.T) *lab.Desired {
			fsys := planLab(four...)
			fsys["lab.yaml"].Data = append(fsys["lab.yaml"].Data, []byte("container_prefix: lab-\n")...)
			return compile(t, fsys)
		}, base: func(t *testing.T) *lab.Desired { return compile(t, planLab(four...)) },
			observe: func(o *runtime.Observed) { o.Networks = nil; o.Volumes = nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			desired := tc.desired(t)
			base := compile(t, planLab(four...))
			if tc.base != nil {
				base = tc.base(t)
			}
			observed := observedFrom(base)
			if tc.observe != nil {
				tc.observe(observed)
			}
			p := reconciler.Plan(desired, observed, tc.opts)
			var out bytes.Buffer
			if err := p.WriteTable(&out); err != nil {
				t.Fatal(err)
			}
			golden(t, "plans/"+tc.name+".txt", out.String())

			// Pure and deterministic: the same inputs give the same bytes.
			again := reconciler.Plan(desired, observed, tc.opts)
			j1, _ := json.Marshal(p)
			j2, _ := json.Marshal(again)
			if !bytes.Equal(j1, j2) {
				t.Error("two plans of the same inputs differ")
			}
		})
	}
}

// The prune guard counts services as it counts agents: a revision that
// would remove more than prune.max_fraction of them, or all of them,
// removes nothing unless forced, and the warning names them.
func TestPruneGuardCountsServices(t *testing.T) {
	four := []string{"alpha", "beta", "delta", "gamma"}
	noCompose := func(fsys fstest.MapFS) fstest.MapFS { delete(fsys, "docker-compose.yaml"); return fsys }
	cases := []struct {
		name          string
		base, desired fstest.MapFS
		force         bool
		blocked       bool
		warns         []string
	}{
		{name: "compose file deleted", base: planLab(four...), desired: noCompose(planLab(four...)), blocked: true,
			warns: []string{"2 of 2 services (api, redis)", "--force-prune"}},
		{name: "last service", base: oneService(planLab(four...)), desired: noCompose(planLab(four...)), blocked: true,
			warns: []string{"1 of 1 services (redis)", "all of them", "--force-prune"}},
		{name: "forced", base: planLab(four...), desired: noCompose(planLab(four...)), force: true},
		{name: "one of two", base: planLab(four...), desired: oneService(planLab(four...))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := reconciler.Plan(compile(t, tc.desired), observedFrom(compile(t, tc.base)), reconciler.PlanOptions{ForcePrune: tc.force})
			removes := 0
			for _, a := range p.Actions {
				if a.Kind == reconciler.Remove {
					removes++
				}
			}
			if p.PruneBlocked != tc.blocked || (removes == 0) != tc.blocked {
				t.Fatalf("blocked = %v with %d removals, want blocked %v; warnings %q", p.PruneBlocked, removes, tc.blocked, p.Warnings)
			}
			all := strings.Join(p.Warnings, "\n")
			for _, w := range tc.warns {
				if !strings.Contains(all, w) {
					t.Errorf("warnings lack %q: %q", w, p.Warnings)
				}
			}
		})
	}
}
