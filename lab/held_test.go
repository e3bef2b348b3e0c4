package lab_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
)

func conf(name string) string {
	return strings.ReplaceAll(confBeta, "beta", name)
}

// An error in a SUT's own files, or a conflict between SUTs, holds exactly
// the SUTs involved; the rest of the lab loads and compiles.
func TestErrorsHoldOnlyTheirSUTs(t *testing.T) {
	fsys := baseLab()
	for p, c := range map[string]string{
		"sut/gamma.conf":          strings.Replace(conf("gamma"), "job_queues", "job_queus", 1),
		"sut/delta.conf":          conf("delta"),
		"sut/delta_snappy.yaml":   "device_ip: 10.0.0.7\n",
		"sut/epsilon.conf":        conf("epsilon"),
		"sut/epsilon_snappy.yaml": "device_ip: 10.0.0.7\n",
		"sut/zeta.conf":           conf("zeta"),
		"sut/zeta.lab.yaml":       "networks:\n  nowhere: {}\n",
		"sut/eta.conf":            strings.Replace(conf("eta"), "agent_id: eta", "agent_id: alpha", 1),
		"sut/theta.conf":          "agent_id: [",
		"sut/.DS_Store":           "\x00\x01",
	} {
		fsys[p] = &fstest.MapFile{Data: []byte(c)}
	}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatalf("SUT errors blocked the lab: %v", err)
	}
	if !l.Diagnostics.HasErrors() {
		t.Fatal("the errors are not reported")
	}
	held := l.HeldNames()
	want := []string{"alpha", "delta", "epsilon", "eta", "gamma", "theta", "zeta"}
	if !slices.Equal(held, want) {
		t.Fatalf("held %v, want %v\n%s", held, want, l.Diagnostics)
	}
	for _, name := range want {
		ds := l.Held[name]
		if len(ds) == 0 || ds[0].Line == 0 || !strings.HasPrefix(ds[0].File, "sut/") {
			t.Errorf("%s is held without a file:line: %v", name, ds)
		}
	}
	d := lab.Compile(l, lab.CompileOptions{})
	var agents []string
	for _, c := range d.Containers {
		if c.Kind == lab.KindAgent {
			agents = append(agents, c.Name)
		}
	}
	if !slices.Equal(agents, []string{"beta"}) {
		t.Errorf("compiled agents %v, want only beta", agents)
	}
	if len(d.Held) != len(want) || len(d.Held["delta"]) == 0 {
		t.Errorf("desired held = %v", d.Held)
	}
}

// Errors outside the SUTs' own files still block the whole lab.
func TestLabWideErrorsBlock(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"lab.yaml":     {"lab.yaml": "agents:\n  memroy: 1g\n"},
		"compose file": {"docker-compose.yaml": "services:\n  a:\n    imagee: x\n"},
	} {
		t.Run(name, func(t *testing.T) {
			fsys := baseLab()
			for p, c := range files {
				fsys[p] = &fstest.MapFile{Data: []byte(c)}
			}
			_, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
			var verr *lab.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Load = %v; want the lab blocked", err)
			}
		})
	}
}

// A device connector's env DEVICE_IP that disagrees with its device_ip is
// a warning: the lab loads, nothing is held.
func TestDeviceIPEnvMismatchIsAWarning(t *testing.T) {
	fsys := baseLab()
	fsys["sut/beta_snappy.yaml"] = &fstest.MapFile{Data: []byte("device_ip: 10.0.0.2\nenv:\n  DEVICE_IP: 10.0.0.22\n")}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil || len(l.HeldNames()) > 0 {
		t.Fatalf("%v, held %v", err, l.HeldNames())
	}
	for _, d := range l.Diagnostics {
		if d.File == "sut/beta_snappy.yaml" && d.Line == 3 && d.Severity == lab.SeverityWarning && strings.Contains(d.Message, "DEVICE_IP") {
			return
		}
	}
	t.Fatalf("no warning at sut/beta_snappy.yaml:3 in:\n%s", l.Diagnostics)
}

// With the agents' folder at the repository root, lab.yaml and the compose
// file are still the lab's own files: their errors block, never hold.
func TestAgentsDirAtTheRootStillBlocks(t *testing.T) {
	fsys := fstest.MapFS{
		"lab.yaml":            {Data: []byte("agents:\n  dir: .\n")},
		"alpha.conf":          {Data: []byte(confAlpha)},
		"docker-compose.yaml": {Data: []byte("services:\n  web:\n    image: nginx\n    bogus: 1\n")},
	}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	var verr *lab.ValidationError
	if !errors.As(err, &verr) || len(l.Held) != 0 {
		t.Fatalf("Load = %v, held %v; want the lab blocked\n%s", err, l.HeldNames(), l.Diagnostics)
	}
}
