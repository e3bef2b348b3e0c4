package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labsync/labsync/agent"
	"github.com/labsync/labsync/internal/testenv"
)

// Every output line is redacted once, before it reaches stdout, the log
// file or MQTT: secret shapes, and the exact values of the container's
// secrets.
func TestOutputIsRedactedEverywhere(t *testing.T) {
	broker := testenv.StartMosquitto(t)
	sub := testenv.Subscribe(t, broker.URL, "dut/#")
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"agent.sh": "echo connecting to maas with s3cr3t-maas-value\n" +
		"echo provision_data: {\\'password\\': \\'ubuntu123\\'}\necho LAST_LINE s3cr3t-maas-value password=hunter22\nexec sleep 300\n"})
	out := &testenv.SyncBuffer{}
	logFile := filepath.Join(dir, "log", "agent.log")
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Run(context.Background(), agent.Config{SUT: "dut", Command: []string{"/bin/sh", filepath.Join(dir, "agent.sh")}, Stdout: out,
			LogFile: logFile, StateDir: filepath.Join(dir, "state"), MarkerDir: dir, MQTT: agent.MQTTOptions{Broker: broker.URL},
			Secrets: []string{"s3cr3t-maas-value"}, Signals: sigs})
	}()
	defer func() { sigs <- syscall.SIGTERM; <-done }()
	testenv.Eventually(t, 10*time.Second, "the last line never reached MQTT", func() bool {
		m, ok := sub.Last("dut/output")
		return ok && strings.Contains(m.Payload, "LAST_LINE")
	})
	var published []string
	for _, m := range sub.Messages() {
		if m.Topic == "dut/output" {
			published = append(published, m.Payload)
		}
	}
	log, _ := os.ReadFile(logFile)
	for where, text := range map[string]string{"stdout": out.String(), "log file": string(log), "MQTT": strings.Join(published, "\n")} {
		for _, secret := range []string{"s3cr3t-maas-value", "ubuntu123", "hunter22"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %s:\n%s", where, secret, text)
			}
		}
		// MQTT keeps only the latest line.
		if !strings.Contains(text, "LAST_LINE *** password=***") || where != "MQTT" && !strings.Contains(text, "connecting to maas with ***") {
			t.Errorf("%s lacks the redacted lines:\n%s", where, text)
		}
	}
}

// testflinger-agent gets the container's environment without
// labsync-agent's own settings: the MQTT password stays with the
// supervisor.
func TestAgentEnvironmentLacksSupervisorSettings(t *testing.T) {
	t.Setenv("LABSYNC_AGENT_MQTT_PASSWORD", "mqtt-pa55word")
	t.Setenv("LABSYNC_AGENT_MQTT_PASSWORD_FILE", "/run/secrets/mqtt")
	t.Setenv("LABSYNC_AGENT_SECRET_ENV", "MAAS_API_KEY")
	t.Setenv("LABSYNC_SUT", "dut")
	t.Setenv("MAAS_API_KEY", "s3cr3t-maas-value")
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	// The environment goes to a file, not the output, which is redacted.
	testenv.WriteFiles(t, dir, map[string]string{"agent.sh": "env > " + envFile + ".tmp && mv " + envFile + ".tmp " + envFile + "\nexec sleep 300\n"})
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Run(context.Background(), agent.Config{SUT: "dut", Command: []string{"/bin/sh", filepath.Join(dir, "agent.sh")}, Env: []string{"FROM_CONFIG=1"},
			Stdout: &testenv.SyncBuffer{}, StateDir: filepath.Join(dir, "state"), MarkerDir: dir, Signals: sigs})
	}()
	defer func() { sigs <- syscall.SIGTERM; <-done }()
	var env []byte
	testenv.Eventually(t, 10*time.Second, "the agent never wrote its environment", func() bool {
		env, _ = os.ReadFile(envFile)
		return len(env) > 0
	})
	vars := map[string]string{}
	for _, line := range strings.Split(string(env), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	for k := range vars {
		if strings.HasPrefix(k, "LABSYNC_AGENT_") || k == "LABSYNC_SUT" {
			t.Errorf("the agent got %s", k)
		}
	}
	if vars["MAAS_API_KEY"] != "s3cr3t-maas-value" || vars["FROM_CONFIG"] != "1" || vars["PATH"] == "" {
		t.Errorf("the agent lacks the environment it needs:\n%s", env)
	}
}
