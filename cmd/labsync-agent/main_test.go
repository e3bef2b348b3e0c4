package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labsync/labsync/internal/testenv"
)

// In an agent container labsync sets LABSYNC_AGENT_SECRET_ENV to the names
// of the agent's secret variables: their values never show in the output.
func TestSecretEnvValuesAreHidden(t *testing.T) {
	t.Setenv("LABSYNC_AGENT_SECRET_ENV", "MAAS_API_KEY,SHORT,UNSET")
	t.Setenv("MAAS_API_KEY", "s3cr3t-maas-value")
	t.Setenv("SHORT", "abc")
	t.Setenv("LABSYNC_AGENT_MQTT_PASSWORD", "mqtt-pa55word")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"run", "--sut", "dut", "--state-dir", filepath.Join(dir, "state"), "--marker-dir", dir, "--",
			"/bin/sh", "-c", `echo "key is $MAAS_API_KEY; abc stays"; echo "mqtt: ${LABSYNC_AGENT_MQTT_PASSWORD:-unset}"; echo done; exec sleep 300`}, stdout, stderr)
	}()
	testenv.Eventually(t, 10*time.Second, "the agent never finished:\n"+stdout.String()+stderr.String(), func() bool {
		return strings.Contains(stdout.String(), "done")
	})
	cancel()
	if code := <-done; code != 0 && code != 128+15 {
		t.Errorf("exit %d:\n%s", code, stderr.String())
	}
	out := stdout.String()
	if strings.Contains(out, "s3cr3t-maas-value") || !strings.Contains(out, "key is ***; abc stays") {
		t.Errorf("the secret's value shows, or the line is lost:\n%s", out)
	}
	if !strings.Contains(out, "mqtt: unset") {
		t.Errorf("the agent saw labsync-agent's MQTT password:\n%s", out)
	}
}
