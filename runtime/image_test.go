package runtime_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labsync/labsync/internal/testenv"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// Build output goes to logs, and its tail into the error that reaches the
// status page, the API, MQTT and pull-request comments: a secret printed
// by a build step is hidden in both.
func TestBuildOutputIsRedacted(t *testing.T) {
	testenv.Docker(t) // the gate
	var logged testenv.SyncBuffer
	rt, err := runtime.New(runtime.Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	// FROM scratch has no shell to echo with: the failing step's own text
	// carries the secrets, in the step line and in the engine's error.
	dockerfile := "FROM scratch\nCOPY db_password=hunter2 missing-token=ghp_abcdefghijklmnopqrst /x/\n"
	name := testenv.Name(t)
	img := lab.ImageSpec{
		Tag:    "labsync-test/" + name + ":1",
		Source: fstest.MapFS{"img/Dockerfile": {Data: []byte(dockerfile)}},
		Context: &lab.BuildContext{Name: "agent", Dir: "img", Dockerfile: "Dockerfile",
			Files: []lab.ContextFile{{Path: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile))}}},
	}
	testenv.CleanupLab(t, rt, name)
	err = rt.BuildImage(context.Background(), name, img)
	if err == nil {
		t.Fatal("the build succeeded")
	}
	for what, text := range map[string]string{"error": err.Error(), "log": logged.String()} {
		for _, secret := range []string{"hunter2", "ghp_abcdefghijklmnopqrst"} {
			if strings.Contains(text, secret) {
				t.Errorf("the %s shows %s:\n%s", what, secret, text)
			}
		}
		if !strings.Contains(text, "db_password=***") {
			t.Errorf("the %s lacks the redacted step:\n%s", what, text)
		}
	}
	if !strings.Contains(err.Error(), "COPY failed") {
		t.Errorf("the error lost the engine's reason: %v", err)
	}
}
