package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labsync/labsync/internal/testenv"
)

func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

func TestValidateLabRepoExample(t *testing.T) {
	out, errOut, err := runCmd(t, "validate", "../../lab-repo-example")
	if err != nil || exitCode(err, &bytes.Buffer{}) != 0 {
		t.Fatalf("validate lab-repo-example: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "is valid") {
		t.Errorf("stdout = %q", out)
	}
}

func TestValidateMisspeltKeyExitsOne(t *testing.T) {
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{
		"sut/dut1.conf": "agent_id: dut1\nserver_address: http://tf:8000\njob_queue: [dut1]\n",
	})
	_, errOut, err := runCmd(t, "validate", dir)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("err = %v, want exit 1", err)
	}
	want := "sut/dut1.conf:3: error: unknown key 'job_queue' (did you mean 'job_queues'?)"
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr = %q, want it to contain %q", errOut, want)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"validate", "a", "b"}, {"plan", "--no-such-flag"}} {
		_, _, err := runCmd(t, args...)
		if code := exitCode(err, &bytes.Buffer{}); code != 2 {
			t.Errorf("labsync %v: exit %d, want 2", args, code)
		}
	}
}

// A lab of the old kind (sut/ and docker-compose.yaml, no lab.yaml)
// validates and plans with defaults.
func TestPlanWithoutLabYAML(t *testing.T) {
	testenv.Docker(t)
	dir := t.TempDir()
	name := testenv.Name(t)
	testenv.WriteFiles(t, dir, map[string]string{
		"sut/dut1.conf":        "agent_id: dut1\nserver_address: http://tf:8000\njob_queues: [dut1]\n",
		"sut/dut1_snappy.yaml": "device_ip: 10.9.9.9\n",
		"docker-compose.yaml":  "services:\n  redis:\n    image: redis:7\n",
	})
	if _, errOut, err := runCmd(t, "validate", dir); err != nil {
		t.Fatalf("validate: %v\n%s", err, errOut)
	}
	out, errOut, err := runCmd(t, "plan", "--name", name, dir)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, errOut)
	}
	for _, want := range []string{"create-network  network  default  " + name + "_default", "create          agent    dut1", "create          service  redis"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCmd(t, "plan", "--json", "--name", name, dir)
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Lab     string `json:"lab"`
		Actions []struct {
			Action, Object string
			Reasons        []string
		} `json:"actions"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.Lab != name || len(p.Actions) != 3 {
		t.Fatalf("plan --json = %s (%v)", out, err)
	}
}

func TestValidateFromGitRepository(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab", "tok3n")
	repo := gs.NewRepo(t, "mylab")
	good := repo.Commit("one agent", map[string]string{
		"sut/dut1.conf": "agent_id: dut1\nserver_address: http://tf:8000\njob_queues: [dut1]\n",
	})
	testenv.Git(t, repo.Dir, "tag", "v1")
	testenv.Git(t, repo.Dir, "push", "-q", "origin", "v1")
	repo.Commit("a typo", map[string]string{
		"sut/dut2.conf": "agent_id: dut2\nserver_address: http://tf:8000\njob_queus: [dut2]\n",
	})
	secret := t.TempDir() + "/token"
	testenv.WriteFiles(t, filepath.Dir(secret), map[string]string{"token": "tok3n\n"})
	common := []string{"--repo", repo.URL, "--git-username", "lab", "--git-password-file", secret, "--cache-dir", t.TempDir()}

	_, errOut, err := runCmd(t, append([]string{"validate"}, common...)...)
	if code := exitCode(err, &bytes.Buffer{}); code != 1 || !strings.Contains(errOut, "sut/dut2.conf:3: error: unknown key 'job_queus' (did you mean 'job_queues'?)") {
		t.Fatalf("validate head: exit %d\n%s", code, errOut)
	}
	out, errOut, err := runCmd(t, append([]string{"validate", "--rev", good[:8]}, common...)...)
	if err != nil || !strings.Contains(out, `lab "mylab" is valid: 1 agent(s)`) {
		t.Fatalf("validate --rev: %v\n%s%s", err, out, errOut)
	}
	if out, errOut, err := runCmd(t, append([]string{"validate", "--rev", "v1"}, common...)...); err != nil || !strings.Contains(out, "is valid") {
		t.Fatalf("validate --rev v1 (a tag): %v\n%s%s", err, out, errOut)
	}
	if strings.Contains(out+errOut, "tok3n") {
		t.Error("the token was printed")
	}
	if _, _, err := runCmd(t, append([]string{"validate", "somedir"}, common...)...); exitCode(err, &bytes.Buffer{}) != 2 {
		t.Error("PATH and --repo together are accepted")
	}
}

// apply builds an image from a build context in the lab folder.
func TestApplyBuildsFromFolder(t *testing.T) {
	rt := testenv.Docker(t)
	name := testenv.Name(t)
	testenv.CleanupLab(t, rt, name)
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{
		"lab.yaml":                   "name: " + name + "\ncontainer_prefix: " + name + "-\n",
		"docker-compose.yaml":        "services:\n  files:\n    build: ./images/files\n    command: [/nothing]\n    restart: \"no\"\n",
		"images/files/Dockerfile":    "FROM scratch\nCOPY hello.txt /hello.txt\n",
		"images/files/hello.txt":     "hello\n",
		"images/files/.dockerignore": "*.log\n",
		"images/files/debug.log":     "ignored\n",
	})
	out, errOut, err := runCmd(t, "apply", dir)
	// The service cannot run (/nothing), but its image must have been built.
	if !strings.Contains(out, "build-image image images/files: ok") {
		t.Fatalf("image not built: %v\n%s\n%s", err, out, errOut)
	}
}

// A relative --data-dir is made absolute: the runtime-data folders are host
// paths the engine takes whole.
func TestRelativeDataDirIsMadeAbsolute(t *testing.T) {
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{
		"lab.yaml":            "name: rel\n",
		"docker-compose.yaml": "services:\n  web:\n    image: web:1\n    volumes: ['./log:/data']\n",
		"log/.gitkeep":        "",
	})
	cwd := t.TempDir()
	t.Chdir(cwd)
	out, errOut, err := runCmd(t, "validate", "--data-dir", "state", dir)
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, errOut)
	}
	want := "host folder " + filepath.Join(cwd, "state", "labs", "rel", "log")
	if !strings.Contains(out, want) {
		t.Errorf("validate with --data-dir state says\n%s\nwant %q", out, want)
	}
}
