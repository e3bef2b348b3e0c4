package lab_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/labsync/labsync/lab"
)

// countingFS counts the opens of each file; cancel, when set, is called
// once after the first cancelAfter opens.
type countingFS struct {
	fs.FS
	mu          sync.Mutex
	opens       map[string]int
	total       int
	cancelAfter int
	cancel      func()
}

func (c *countingFS) Open(name string) (fs.File, error) {
	c.mu.Lock()
	c.opens[name]++
	c.total++
	if c.cancel != nil && c.total == c.cancelAfter {
		c.cancel()
	}
	c.mu.Unlock()
	return c.FS.Open(name)
}

func (c *countingFS) ReadDir(name string) ([]fs.DirEntry, error) { return fs.ReadDir(c.FS, name) }

func (c *countingFS) mostOpened() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	best, n := "", 0
	for f, k := range c.opens {
		if k > n {
			best, n = f, k
		}
	}
	return best, n
}

func hostileLab(files map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{
		"sut/alpha.conf":        {Data: []byte(confAlpha)},
		"sut/alpha_snappy.yaml": {Data: []byte("device_ip: 10.0.0.1\n")},
	}
	for p, c := range files {
		fsys[p] = &fstest.MapFile{Data: []byte(c)}
	}
	return fsys
}

func mergeChain(n int) string {
	var b strings.Builder
	b.WriteString("x-m0: &m0 {k0: v}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "x-m%d: &m%d\n  k%d: v\n  <<: [*m%d, *m%d]\n", i, i, i, i-1, i-1)
	}
	b.WriteString("services:\n  a:\n    image: redis\n    labels:\n      <<: *m" + fmt.Sprint(n) + "\n")
	return b.String()
}

// Hostile YAML is an error with file:line, never a crash or a hang.
func TestHostileYAMLIsAnError(t *testing.T) {
	cases := []struct {
		name, file, data string
		line             int
		msg              string
	}{
		{"self-including merge in lab.yaml", "lab.yaml", "agents: &a\n  dir: sut\n  <<: *a\n", 3, "includes itself"},
		{"self-including merge in the compose file", "docker-compose.yaml", "services:\n  redis: &r\n    image: redis\n    <<: *r\n", 4, "includes itself"},
		{"exponential merge chain in the compose file", "docker-compose.yaml", mergeChain(40), 0, "expand to more than"},
		{"a compose file of too many nodes", "docker-compose.yaml", "services: {}\nx-junk: [" + strings.Repeat("{},", lab.MaxComposeNodes) + "{}]\n", 2, "YAML nodes"},
		{"self-including alias in a SUT file", "sut/alpha.yaml", "job_queue: alpha\ntest_data: &t\n  test_cmds: [*t]\n", 3, "includes itself"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := lab.Load(hostileLab(map[string]string{tc.file: tc.data}), lab.LoadOptions{DefaultName: "h"})
			var verr *lab.ValidationError
			if !errors.As(err, &verr) && !l.Diagnostics.HasErrors() { // a SUT file's error holds that SUT
				t.Fatalf("Load = %v; want a validation error", err)
			}
			for _, d := range l.Diagnostics {
				if d.File == tc.file && strings.Contains(d.Message, tc.msg) && (tc.line == 0 || d.Line == tc.line) && d.Line > 0 {
					return
				}
			}
			t.Fatalf("no %s:%d error with %q in:\n%s", tc.file, tc.line, tc.msg, l.Diagnostics)
		})
	}
}

// Tens of thousands of errors in one file: every one found in linear time,
// the report capped with a count of what is left out.
func TestManyErrorsAreCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("agents:\n  env:\n")
	for i := range 1999 {
		fmt.Fprintf(&b, "    \"bad key %d\": x\n", i)
	}
	b.WriteString("  command:\n")
	for i := range 26003 {
		fmt.Fprintf(&b, "    - {n: %d}\n", i)
	}
	for i := range 1998 {
		fmt.Fprintf(&b, "unknown%d: 1\n", i)
	}
	start := time.Now()
	l, err := lab.Load(hostileLab(map[string]string{"lab.yaml": b.String()}), lab.LoadOptions{DefaultName: "h"})
	t.Logf("loaded %d bytes with 30000 errors in %s", b.Len(), time.Since(start).Round(time.Millisecond))
	var verr *lab.ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("Load = %v", err)
	}
	shown := 0
	var summary *lab.Diagnostic
	for i, d := range l.Diagnostics {
		if d.File != "lab.yaml" {
			continue
		}
		if strings.Contains(d.Message, "more problems in this file") {
			summary = &l.Diagnostics[i]
			continue
		}
		shown++
		if d.Line == 0 {
			t.Errorf("error without a line: %s", d)
		}
	}
	if shown != lab.MaxDiagnosticsPerFile {
		t.Errorf("%d diagnostics shown for lab.yaml; want %d", shown, lab.MaxDiagnosticsPerFile)
	}
	if summary == nil || !strings.Contains(summary.Message, fmt.Sprint(30000-lab.MaxDiagnosticsPerFile)) {
		t.Errorf("summary = %v; want the number left out", summary)
	}
}

// 200 services bind-mount one folder: it is listed and read once, and the
// lab compiles.
func TestSharedMountIsReadOnce(t *testing.T) {
	fsys := hostileLab(nil)
	chunk := strings.Repeat("x", 512<<10)
	for i := range 20 {
		fsys[fmt.Sprintf("shared/part%02d.txt", i)] = &fstest.MapFile{Data: []byte(chunk + fmt.Sprint(i))}
	}
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 200 {
		fmt.Fprintf(&b, "  svc%03d:\n    image: redis\n    volumes: [\"./shared:/srv/shared:ro\"]\n", i)
	}
	fsys["docker-compose.yaml"] = &fstest.MapFile{Data: []byte(b.String())}
	cfs := &countingFS{FS: fsys, opens: map[string]int{}}
	start := time.Now()
	l, err := lab.Load(cfs, lab.LoadOptions{DefaultName: "h"})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	d := lab.Compile(l, lab.CompileOptions{})
	t.Logf("200 services, one 10 MiB folder: loaded and compiled in %s", time.Since(start).Round(time.Millisecond))
	if f, n := cfs.mostOpened(); n > 1 {
		t.Errorf("%s opened %d times; want once", f, n)
	}
	if len(d.Containers) != 201 {
		t.Fatalf("%d containers", len(d.Containers))
	}
	for _, c := range d.Containers {
		if c.Kind == lab.KindService && len(c.Files) != 20 {
			t.Fatalf("%s has %d files; want 20", c.Name, len(c.Files))
		}
	}
	// The same content in each service gives the same file digests.
	if a, b := d.Containers[0].Fields["file:shared/part00.txt"], d.Containers[1].Fields["file:shared/part00.txt"]; a == "" || a != b {
		t.Errorf("file digests %q and %q", a, b)
	}
}

// A lab that reads more than its budget is an error that says so.
func TestReadBudget(t *testing.T) {
	fsys := hostileLab(nil)
	for i := range 10 {
		fsys[fmt.Sprintf("data/f%d", i)] = &fstest.MapFile{Data: []byte(strings.Repeat("y", 1000))}
	}
	fsys["docker-compose.yaml"] = &fstest.MapFile{Data: []byte("services:\n  a:\n    image: redis\n    volumes: [\"./data:/data\"]\n")}
	for _, tc := range []struct {
		name string
		opts lab.LoadOptions
		msg  string
	}{
		{"bytes", lab.LoadOptions{MaxBytes: 5000}, "more than 5000 bytes"},
		{"files", lab.LoadOptions{MaxFiles: 6}, "more than 6 files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := lab.Load(fsys, tc.opts)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, d := range l.Diagnostics {
				if strings.Contains(d.Message, tc.msg) {
					return
				}
			}
			t.Fatalf("no %q in:\n%s", tc.msg, l.Diagnostics)
		})
	}
}

// Loading stops at the first read after its context ends.
func TestLoadHonoursContext(t *testing.T) {
	fsys := hostileLab(nil)
	for i := range 500 {
		fsys[fmt.Sprintf("sut/dut%03d.conf", i)] = &fstest.MapFile{Data: []byte(strings.ReplaceAll(confAlpha, "alpha", fmt.Sprintf("dut%03d", i)))}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfs := &countingFS{FS: fsys, opens: map[string]int{}, cancelAfter: 20, cancel: cancel}
	_, err := lab.LoadContext(ctx, cfs, lab.LoadOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Load = %v; want context.Canceled", err)
	}
	if cfs.total > 22 {
		t.Errorf("%d files opened after the context ended at 20", cfs.total-20)
	}
}

// An env file whose values double by referring to each other is an error,
// found before the expansion is made.
func TestEnvFileExpansionIsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("A0=xxxxxxxxxxxxxxxx\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "A%d=${A%d}${A%d}\n", i, i-1, i-1)
	}
	fsys := hostileLab(map[string]string{
		"docker-compose.yaml": "services:\n  a:\n    image: redis\n    env_file: [bomb.env]\n",
		"bomb.env":            b.String(),
	})
	start := time.Now()
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "h"})
	t.Logf("loaded in %s", time.Since(start).Round(time.Millisecond))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, d := range l.Diagnostics {
		if d.File == "bomb.env" && d.Line > 0 && strings.Contains(d.Message, "expand") {
			return
		}
	}
	t.Fatalf("no bomb.env:line error in:\n%s", l.Diagnostics)
}

// Env file values that refer to values of the same file are not expanded
// by labsync: whatever the syntax, such a file is an error.
func TestEnvFileSelfReferencesAreRefused(t *testing.T) {
	for name, env := range map[string]string{
		"equals":         "A0=xxxxxxxx\nA1=${A0}${A0}\n",
		"colon":          "A0: xxxxxxxx\nA1: ${A0}${A0}\n",
		"dollar name":    "A0=x\nA1=$A0$A0\n",
		"nested default": "A0=x\nA1=${NOPE:-${A0}}\n",
		"same line":      "A0=\"x\" A1=\"${A0}${A0}\"\n",
		"multi-line":     "A0=\"x\ny\"\nQ=\"\nA1=${A0}${A0}\n\"\n",
		"export":         "export A0=x\nexport A1=${A0}\n",
	} {
		t.Run(name, func(t *testing.T) {
			fsys := hostileLab(map[string]string{
				"docker-compose.yaml": "services:\n  a:\n    image: redis\n    env_file: [x.env]\n",
				"x.env":               env,
			})
			l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "h"})
			if err == nil {
				t.Fatal("accepted")
			}
			for _, d := range l.Diagnostics {
				if d.File == "x.env" && strings.Contains(d.Message, "refer") {
					return
				}
			}
			t.Fatalf("no x.env error in:\n%s", l.Diagnostics)
		})
	}
	// Escaped dollars and references to nothing the file defines are fine.
	fsys := hostileLab(map[string]string{
		"docker-compose.yaml": "services:\n  a:\n    image: redis\n    env_file: [x.env]\n",
		"x.env":               "PASSWORD=pa$$word\nHOME_DIR=${HOME:-/root}\n",
	})
	if l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "h"}); err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
}

// A .dockerignore is a lab file like others: bounded in size, and in the
// patterns every file of the context is matched against.
func TestDockerignoreIsBounded(t *testing.T) {
	var b strings.Builder
	for i := range lab.MaxIgnorePatterns + 1 {
		fmt.Fprintf(&b, "junk%d/**\n", i)
	}
	fsys := hostileLab(map[string]string{
		"images/agent/Dockerfile":    "FROM scratch\n",
		"images/agent/.dockerignore": b.String(),
	})
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "h"})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, d := range l.Diagnostics {
		if strings.HasSuffix(d.File, ".dockerignore") && strings.Contains(d.Message, "patterns") {
			return
		}
	}
	t.Fatalf("no .dockerignore error in:\n%s", l.Diagnostics)
}
