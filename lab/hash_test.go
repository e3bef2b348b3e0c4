package lab_test

import (
	"reflect"
	"testing"
	"testing/fstest"
	"time"

	"github.com/labsync/labsync/lab"
)

func compileBase(t *testing.T) *lab.Desired {
	t.Helper()
	l, err := lab.Load(baseLab(), lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatal(err)
	}
	return lab.Compile(l, lab.CompileOptions{Revision: "r1"})
}

func TestSpecHashIsStable(t *testing.T) {
	a, b := compileBase(t), compileBase(t)
	for i := range a.Containers {
		if a.Containers[i].Hash != b.Containers[i].Hash {
			t.Errorf("%s: hash differs between two compiles", a.Containers[i].Name)
		}
	}
	// The revision is not part of the hash.
	l, _ := lab.Load(baseLab(), lab.LoadOptions{DefaultName: "lab1"})
	c := lab.Compile(l, lab.CompileOptions{Revision: "r2"})
	if c.Containers[0].Hash != a.Containers[0].Hash {
		t.Error("hash depends on the revision")
	}
}

// Map order never matters: maps built in different orders hash alike.
func TestSpecHashIgnoresMapOrder(t *testing.T) {
	keys := []string{"A", "B", "C", "D", "E", "F", "G", "H", "I", "J"}
	var hashes []string
	for round := 0; round < 20; round++ {
		env := map[string]string{}
		for i := range keys {
			k := keys[(i+round)%len(keys)]
			env[k] = "v" + k
		}
		spec := lab.ContainerSpec{Name: "x", ContainerName: "x", Image: "img", Env: env, Labels: map[string]string{"b": "1", "a": "2"}}
		hashes = append(hashes, lab.SealForTest(&spec))
	}
	for _, h := range hashes[1:] {
		if h != hashes[0] {
			t.Fatal("hash depends on map insertion order")
		}
	}
}

// Every field that defines a container changes the hash.
func TestSpecHashCoversEveryField(t *testing.T) {
	base := lab.ContainerSpec{Name: "x", ContainerName: "x", Image: "img"}
	baseHash := lab.SealForTest(&base)
	typ := reflect.TypeOf(base)
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if f.Tag.Get("json") == "-" {
			continue
		}
		spec := base
		v := reflect.ValueOf(&spec).Elem().Field(i)
		mutate(t, f.Name, v)
		if lab.SealForTest(&spec) == baseHash {
			t.Errorf("changing %s does not change the hash", f.Name)
		}
	}
}

func mutate(t *testing.T, name string, v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "-changed")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		m.SetMapIndex(reflect.ValueOf("k"), reflect.ValueOf("v"))
		v.Set(m)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fillFirst(s.Index(0))
		v.Set(s)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fillFirst(p.Elem())
		v.Set(p)
	default:
		t.Fatalf("field %s of kind %s: teach mutate about it", name, v.Kind())
	}
}

func fillFirst(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Field(i).CanSet() && v.Type().Field(i).Tag.Get("json") != "-" {
				fillFirst(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes([]byte("x"))
		} else {
			s := reflect.MakeSlice(v.Type(), 1, 1)
			fillFirst(s.Index(0))
			v.Set(s)
		}
	case reflect.Int64:
		if v.Type() == reflect.TypeOf(time.Duration(0)) {
			v.SetInt(int64(time.Second))
		} else {
			v.SetInt(1)
		}
	case reflect.Int, reflect.Uint32:
		if v.CanInt() {
			v.SetInt(1)
		} else {
			v.SetUint(1)
		}
	case reflect.Bool:
		v.SetBool(true)
	}
}

// A change of one key of a SUT file shows as that file and key.
func TestFieldDigestsNameTheChangedKey(t *testing.T) {
	a := compileBase(t)
	fsys := baseLab()
	fsys["sut/alpha.conf"].Data = []byte(confAlpha + "logging_level: DEBUG\n")
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatal(err)
	}
	b := lab.Compile(l, lab.CompileOptions{})
	var changed []string
	for k, v := range b.Containers[2].Fields {
		if a.Containers[2].Fields[k] != v {
			changed = append(changed, k)
		}
	}
	want := map[string]bool{"file:sut/alpha.conf": true, "file:sut/alpha.conf#logging_level": true}
	if len(changed) != 2 || !want[changed[0]] || !want[changed[1]] {
		t.Errorf("changed fields = %v, want the file and its key", changed)
	}
	if b.Containers[3].Hash != a.Containers[3].Hash {
		t.Error("beta's hash changed with alpha's file")
	}
}

// Containers made under schema 1 hashed files by content: LegacyHash gives
// those hashes back (recorded from the schema-1 code), so an upgrade of
// labsync recreates nothing.
func TestLegacyHashMatchesSchema1(t *testing.T) {
	want := map[string]string{
		"redis": "9ac150a5b32175df546489e284a9cd130782425038ba7a3b49688b3cea539304",
		"alpha": "83715f98367cc305ce68760569e6f70d4384098d78739a49b560647cb2a0c356",
		"beta":  "ebaded02c3a8cc9daffa5bb5f6dd32fdde580f5a1fc53a364daab4436fbee9e5",
	}
	// The agents' defaults changed since (labsync-agent moved to
	// /opt/labsync): the lab sets the defaults of then.
	// and no broker in the stack (agents now report to it by default).
	fsys := baseLab()
	fsys["docker-compose.yaml"] = &fstest.MapFile{Data: []byte("services:\n  redis:\n    image: redis:7\n    volumes:\n      - redis-data:/data\nvolumes:\n  redis-data: {}\n")}
	fsys["lab.yaml"] = &fstest.MapFile{Data: []byte("agents:\n  command: [labsync-agent, run, --sut, \"{name}\", --, testflinger-agent, -c, \"{conf}\"]\n" +
		"  healthcheck: {test: [CMD, labsync-agent, healthcheck], interval: 10s, timeout: 5s, start_period: 30s, retries: 3}\n")}
	l, err := lab.Load(fsys, lab.LoadOptions{DefaultName: "lab1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range lab.Compile(l, lab.CompileOptions{Revision: "r1"}).Containers {
		if got := c.LegacyHash(); got != want[c.Name] {
			t.Errorf("%s: legacy hash %s, want %s", c.Name, got, want[c.Name])
		}
		if c.Hash == c.LegacyHash() && len(c.Files) > 0 {
			t.Errorf("%s: schema-2 hash equals the legacy one", c.Name)
		}
	}
}
