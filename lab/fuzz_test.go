package lab_test

import (
	"context"
	"testing"
	"testing/fstest"
	"time"

	"github.com/labsync/labsync/lab"
)

// fuzzLoad loads fsys with a deadline: whatever the files hold, Load ends
// without a panic, within its bounds.
func fuzzLoad(t *testing.T, fsys fstest.MapFS) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := lab.LoadContext(ctx, fsys, lab.LoadOptions{DefaultName: "fuzz"})
	if ctx.Err() != nil {
		t.Fatalf("Load did not end within 10s")
	}
	if l == nil {
		t.Fatal("Load returned no lab")
	}
	if err == nil {
		_ = lab.Compile(l, lab.CompileOptions{})
	}
}

// FuzzLoad fuzzes the lab loader: lab.yaml and one SUT's three files.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("name: x\nagents:\n  env: {A: b}\n"), []byte(confAlpha), []byte("device_ip: 10.0.0.1\n"), []byte("job_queue: alpha\n"))
	f.Add([]byte("agents: &a\n  dir: sut\n  <<: *a\n"), []byte(confAlpha), []byte(""), []byte(""))
	f.Add([]byte(""), []byte("agent_id: &a [*a]\n"), []byte("device_ip: &d {x: *d}\n"), []byte("job_queue: [1, {a: b}]\n"))
	f.Fuzz(func(t *testing.T, labYAML, conf, connector, job []byte) {
		fsys := fstest.MapFS{
			"lab.yaml":              {Data: labYAML},
			"sut/alpha.conf":        {Data: conf},
			"sut/alpha_snappy.yaml": {Data: connector},
			"sut/alpha.yaml":        {Data: job},
		}
		fuzzLoad(t, fsys)
	})
}

// FuzzCompose fuzzes the compose reader, with a repository file to mount.
func FuzzCompose(f *testing.F) {
	f.Add([]byte(baseCompose))
	f.Add([]byte("services:\n  r: &r\n    image: redis\n    <<: *r\n"))
	f.Add([]byte("services:\n  a:\n    image: a\n    volumes: [\"./conf:/etc/conf\", \"/var/run/docker.sock:/s\"]\n    ports: [\"80:80\"]\n    depends_on: {b: {condition: service_healthy}}\n  b:\n    build: ./conf\n"))
	f.Add([]byte("x-a: &a {image: a}\nservices:\n  a: {<<: *a, env_file: [conf/env]}\nnetworks:\n  n: {ipam: {config: [{subnet: 10.1.0.0/24}]}}\nvolumes:\n  v: {driver_opts: {o: bind}}\n"))
	f.Fuzz(func(t *testing.T, compose []byte) {
		fsys := fstest.MapFS{
			"sut/alpha.conf":      {Data: []byte(confAlpha)},
			"docker-compose.yaml": {Data: compose},
			"conf/env":            {Data: []byte("A=1\n")},
			"conf/Dockerfile":     {Data: []byte("FROM scratch\n")},
		}
		fuzzLoad(t, fsys)
	})
}
