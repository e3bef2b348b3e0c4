package runtime_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
	"github.com/labsync/labsync/runtime"
)

// An agent's secrets are set as environment variables, and named in
// LABSYNC_AGENT_SECRET_ENV so labsync-agent hides their values in the
// agent's output. The variable is added at create: the spec hash, and so
// drift detection, do not see it.
func TestAgentSecretsAreNamedForLabsyncAgent(t *testing.T) {
	testenv.Docker(t) // the gate
	secrets := t.TempDir()
	testenv.WriteFiles(t, secrets, map[string]string{"maas-key": "s3cr3t-maas-value\n", "tf-token": "tf-t0ken-value"})
	rt, err := runtime.New(runtime.Options{Secrets: runtime.DirSecrets{Dir: secrets}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	image := testenv.StandinImage(t, rt)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	// The stand-in cannot read its config, and says so with the path: the
	// secret's value, printed by the agent.
	l, err := lab.Load(fstest.MapFS{
		"lab.yaml": {Data: []byte("name: " + name + "\ncontainer_prefix: " + name + "-\nagents:\n  image: {name: " + image + "}\n" +
			"  command: [labsync-agent, run, --sut, '{name}', --restart-min, 10s, --, testflinger-agent, -c, /missing/s3cr3t-maas-value]\n" +
			"  secrets: {MAAS_API_KEY: maas-key, TF_TOKEN: tf-token}\n  env: {PLAIN: 'yes'}\n")},
		"sut/dut.conf": {Data: []byte("agent_id: dut\nserver_address: http://tf\njob_queues: [dut]\n")},
	}, lab.LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	d := lab.Compile(l, lab.CompileOptions{Revision: "r1"})
	ctx := context.Background()
	for _, n := range d.Networks {
		if err := rt.CreateNetwork(ctx, d.Lab, n); err != nil {
			t.Fatal(err)
		}
	}
	spec := &d.Containers[0]
	hash := spec.Hash
	id, err := rt.CreateContainer(ctx, spec, runtime.CreateOptions{Lab: d.Lab, Revision: d.Revision})
	if err != nil {
		t.Fatal(err)
	}
	info, err := rt.API().ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range info.Config.Env {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	if got := env["LABSYNC_AGENT_SECRET_ENV"]; got != "MAAS_API_KEY,TF_TOKEN" {
		t.Errorf("LABSYNC_AGENT_SECRET_ENV = %q, want MAAS_API_KEY,TF_TOKEN", got)
	}
	if env["MAAS_API_KEY"] != "s3cr3t-maas-value" || env["PLAIN"] != "yes" {
		t.Errorf("env = %v", info.Config.Env)
	}

	if err := rt.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	var logs string
	testenv.Eventually(t, 30*time.Second, "the agent never said it cannot read its config", func() bool {
		logs = containerLogs(t, rt, id)
		return strings.Contains(logs, "cannot read config")
	})
	if strings.Contains(logs, "s3cr3t-maas-value") || !strings.Contains(logs, "/missing/***") {
		t.Errorf("the agent's output shows the secret, or lost the line:\n%s", logs)
	}

	// Nothing the planner compares changed: the hash label is the spec's,
	// and a plan finds the agent in sync.
	if spec.Hash != hash || info.Config.Labels[runtime.LabelHash] != hash {
		t.Errorf("hash %s, label %s, want %s", spec.Hash, info.Config.Labels[runtime.LabelHash], hash)
	}
	obs, err := rt.Observe(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range reconciler.Plan(d, obs, reconciler.PlanOptions{}).Actions {
		if a.Object == "dut" {
			t.Errorf("plan acts on the agent: %s %v", a.Kind, a.Reasons)
		}
	}
	// Secrets stay out of labels.
	for k, v := range info.Config.Labels {
		if strings.Contains(v, "s3cr3t") {
			t.Errorf("label %s holds the secret", k)
		}
	}
}

func containerLogs(t *testing.T, rt *runtime.Client, id string) string {
	t.Helper()
	rc, err := rt.API().ContainerLogs(context.Background(), id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out bytes.Buffer
	_, _ = stdcopy.StdCopy(&out, &out, io.LimitReader(rc, 1<<20))
	return out.String()
}

// An agent whose environment names no broker gets the embedded broker's
// socket folder and LABSYNC_AGENT_MQTT pointing at it; one that names a
// broker, in env or as a secret, keeps its own and gets no mount.
func TestAgentSocketOnlyWithoutOwnBroker(t *testing.T) {
	testenv.Docker(t) // the gate
	secrets := t.TempDir()
	testenv.WriteFiles(t, secrets, map[string]string{"broker": "tcp://secret-broker:1883"})
	rt, err := runtime.New(runtime.Options{Secrets: runtime.DirSecrets{Dir: secrets}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	image := testenv.StandinImage(t, rt)
	socketDir := t.TempDir()
	ctx := context.Background()
	for _, tc := range []struct {
		name, agents string
		want         string // LABSYNC_AGENT_MQTT in the container
		mount        bool
	}{
		{"none", "", "unix://" + runtime.AgentMQTTMount + "/" + runtime.AgentMQTTSocket, true},
		{"env", "  env: {LABSYNC_AGENT_MQTT: 'tcp://mosquitto:1883'}\n", "tcp://mosquitto:1883", false},
		{"secret", "  secrets: {LABSYNC_AGENT_MQTT: broker}\n", "tcp://secret-broker:1883", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := testenv.Name(t)
			testenv.CleanupLab(t, rt, name)
			l, err := lab.Load(fstest.MapFS{
				"lab.yaml":     {Data: []byte("name: " + name + "\ncontainer_prefix: " + name + "-\nagents:\n  image: {name: " + image + "}\n" + tc.agents)},
				"sut/dut.conf": {Data: []byte("agent_id: dut\nserver_address: http://tf\njob_queues: [dut]\n")},
			}, lab.LoadOptions{})
			if err != nil {
				t.Fatalf("%v\n%s", err, l.Diagnostics)
			}
			d := lab.Compile(l, lab.CompileOptions{Revision: "r1"})
			for _, n := range d.Networks {
				if err := rt.CreateNetwork(ctx, d.Lab, n); err != nil {
					t.Fatal(err)
				}
			}
			id, err := rt.CreateContainer(ctx, &d.Containers[0], runtime.CreateOptions{Lab: d.Lab, Revision: d.Revision, AgentMQTTDir: socketDir})
			if err != nil {
				t.Fatal(err)
			}
			info, err := rt.API().ContainerInspect(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range info.Config.Env {
				if k, v, _ := strings.Cut(e, "="); k == "LABSYNC_AGENT_MQTT" {
					got = append(got, v)
				}
			}
			if len(got) != 1 || got[0] != tc.want {
				t.Errorf("LABSYNC_AGENT_MQTT = %q, want [%s]", got, tc.want)
			}
			mounted := false
			for _, b := range info.HostConfig.Binds {
				if b == socketDir+":"+runtime.AgentMQTTMount {
					mounted = true
				}
			}
			if mounted != tc.mount {
				t.Errorf("socket folder mounted = %v, want %v (binds %v)", mounted, tc.mount, info.HostConfig.Binds)
			}
		})
	}
}
