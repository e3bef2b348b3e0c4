package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// labContainers inspects every container labelled for labName, by object.
func labContainers(t *testing.T, rt *runtime.Client, labName string) map[string]container.InspectResponse {
	t.Helper()
	ctx := context.Background()
	cs, err := rt.API().ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", runtime.LabelLab+"="+labName))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]container.InspectResponse{}
	for _, c := range cs {
		info, err := rt.API().ContainerInspect(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[c.Labels[runtime.LabelObject]] = info
	}
	return out
}

// An agent image built without labsync-agent in it (as from the old
// stack's own Dockerfile) runs healthy under labsync's default command and
// healthcheck: labsync gives every agent container its labsync-agent,
// read-only at /opt/labsync, from one volume filled once.
func TestAgentImageWithoutSupervisorRunsHealthy(t *testing.T) {
	t.Parallel()
	rt := testenv.Docker(t)
	image := testenv.BareStandinImage(t, rt)
	agentBin := testenv.AgentBinary(t)
	want, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	dir := t.TempDir()
	// No command, no healthcheck: the defaults.
	files := map[string]string{"lab.yaml": fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n", name, image)}
	agents := []string{"alpha", "beta", "gamma"}
	for _, a := range agents {
		files["sut/"+a+".conf"] = agentConfFor(a)
	}
	testenv.WriteFiles(t, dir, files)

	out, errOut, err := runCmd(t, "apply", "--agent-binary", agentBin, dir)
	if err != nil {
		t.Fatalf("apply: %v\n%s\n%s", err, out, errOut)
	}
	cs := labContainers(t, rt, name)
	volume := ""
	for _, a := range agents {
		c, ok := cs[a]
		if !ok {
			t.Fatalf("no container for %s: %v", a, cs)
		}
		if got := strings.Join(c.Config.Cmd, " "); got != "/opt/labsync/labsync-agent run --sut "+a+" -- testflinger-agent -c /data/testflinger-agent/sut/"+a+".conf" {
			t.Errorf("%s runs %q, want the default command", a, got)
		}
		if c.Config.Healthcheck == nil || strings.Join(c.Config.Healthcheck.Test, " ") != "CMD /opt/labsync/labsync-agent healthcheck" {
			t.Errorf("%s healthcheck = %+v, want the default", a, c.Config.Healthcheck)
		}
		if c.State == nil || c.State.Health == nil || c.State.Health.Status != "healthy" {
			t.Errorf("%s state = %+v, want running and healthy", a, c.State)
		}
		var mounted []string
		for _, m := range c.Mounts {
			if m.Destination == lab.AgentBinDir {
				mounted = append(mounted, m.Name)
				if m.RW {
					t.Errorf("%s mounts %s read-write", a, m.Name)
				}
				if volume == "" {
					volume = m.Name
				} else if m.Name != volume {
					t.Errorf("%s mounts %s, another agent %s", a, m.Name, volume)
				}
			}
		}
		if len(mounted) != 1 {
			t.Errorf("%s mounts %v at %s, want one volume", a, mounted, lab.AgentBinDir)
		}
		got, err := testenv.ReadContainerFile(context.Background(), rt, c.ID, lab.AgentBinDir+"/labsync-agent")
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: /opt/labsync/labsync-agent is not the binary given (%d bytes, err %v)", a, len(got), err)
		}
	}

	// The volume is labsync's own, not an undeclared volume of the lab:
	// the next plan has nothing to do and warns about nothing.
	out, errOut, err = runCmd(t, "plan", dir)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "No changes") || strings.Contains(out, "Warnings") {
		t.Errorf("plan after apply:\n%s", out)
	}
}

// Without a labsync-agent binary anywhere, an agent whose image lacks it
// cannot run the default command: its create fails and says which flag to
// set. Nothing else is blocked.
func TestNoAgentBinaryFailsOnlyAgentsThatNeedIt(t *testing.T) {
	rt := testenv.Docker(t)
	image := testenv.BareStandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{
		"lab.yaml":          fmt.Sprintf("name: %[1]s\ncontainer_prefix: %[1]s-\nagents:\n  image: {name: %[2]s}\n  healthcheck: {disable: true}\n  update: {min_uptime: 200ms}\n", name, image),
		"sut/alpha.conf":    agentConfFor("alpha"),
		"sut/beta.conf":     agentConfFor("beta"),
		"sut/beta.lab.yaml": "command: [testflinger-agent, -c, '{conf}']\n",
	})
	// Neither next to this executable nor on PATH.
	t.Setenv("PATH", t.TempDir())
	t.Setenv("LABSYNC_AGENT_BINARY", "")

	out, errOut, err := runCmd(t, "apply", dir)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("apply: err = %v, want exit 1\n%s\n%s", err, out, errOut)
	}
	if !strings.Contains(out, "alpha: failed") || !strings.Contains(out, "--agent-binary") {
		t.Errorf("alpha's failure does not name --agent-binary:\n%s", out)
	}
	cs := labContainers(t, rt, name)
	if _, ok := cs["alpha"]; ok {
		t.Error("alpha's failed container was left behind")
	}
	if c, ok := cs["beta"]; !ok || c.State == nil || !c.State.Running {
		t.Errorf("beta, which needs no labsync-agent, is not running: %+v", cs["beta"].State)
	}
}
