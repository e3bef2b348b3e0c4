package lab_test

import (
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/lab"
)

func buildLab(extra map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{
		"lab.yaml":                   {Data: []byte("name: b\n")},
		"sut/dut.conf":               {Data: []byte("agent_id: dut\nserver_address: tf\njob_queues: [dut]\n")},
		"images/agent/Dockerfile":    {Data: []byte("FROM scratch\nCOPY . /\n")},
		"images/agent/.dockerignore": {Data: []byte("*.log\nbuild/\n!build/keep.txt\n")},
		"images/agent/app.py":        {Data: []byte("print(1)\n"), Mode: 0o755},
	}
	for p, c := range extra {
		fsys[p] = &fstest.MapFile{Data: []byte(c)}
	}
	return fsys
}

func agentImage(t *testing.T, fsys fstest.MapFS) *lab.BuildContext {
	t.Helper()
	l, err := lab.Load(fsys, lab.LoadOptions{})
	if err != nil {
		t.Fatalf("%v\n%s", err, l.Diagnostics)
	}
	if l.AgentImage.Build == nil {
		t.Fatal("images/agent/Dockerfile is not used as the default agent image")
	}
	return l.AgentImage.Build
}

func TestBuildContextHonoursDockerignore(t *testing.T) {
	base := agentImage(t, buildLab(nil))
	var files []string
	for _, f := range base.Files {
		files = append(files, f.Path)
	}
	if got := len(files); got != 3 {
		t.Fatalf("context files = %v, want .dockerignore, Dockerfile, app.py", files)
	}
	ignored := agentImage(t, buildLab(map[string]string{"images/agent/debug.log": "noise", "images/agent/build/out.o": "x"}))
	if ignored.Digest != base.Digest {
		t.Error("an ignored file changed the context digest")
	}
	kept := agentImage(t, buildLab(map[string]string{"images/agent/build/keep.txt": "x"}))
	if kept.Digest == base.Digest {
		t.Error("a re-included file did not change the digest")
	}
	changed := agentImage(t, buildLab(map[string]string{"images/agent/app.py": "print(2)\n"}))
	if changed.Digest == base.Digest {
		t.Error("a changed file did not change the digest")
	}
	if base.Tag("b") != "labsync/b/images-agent:"+base.Digest[:12] {
		t.Errorf("tag = %s", base.Tag("b"))
	}
}
