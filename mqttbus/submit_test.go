package mqttbus_test

import (
	"strings"
	"testing"

	"github.com/labsync/labsync/mqttbus"
)

const template = "job_queue: dut1\nprovision_data:\n  distro: noble\ntest_data:\n  test_cmds: replaced\n  attachments: []\n"

func TestParseSubmit(t *testing.T) {
	for _, tc := range []struct {
		name, payload, template string
		queue, cmds             string
		err                     string
	}{
		{name: "text into template", payload: "echo hi\nls -la", template: template, queue: "dut1", cmds: "echo hi\nls -la"},
		{name: "text without template", payload: "checkbox-cli run x", queue: "dut1", cmds: "checkbox-cli run x"},
		{name: "text with a colon", payload: "echo: not a job", queue: "dut1", cmds: "echo: not a job"},
		{name: "yaml job", payload: "job_queue: other\ntest_data:\n  test_cmds: uname -a\n", queue: "other", cmds: "uname -a"},
		{name: "json job without queue", payload: `{"test_data": {"test_cmds": "true"}}`, template: template, queue: "dut1", cmds: "true"},
		{name: "empty", payload: "  \n", err: "empty payload"},
		{name: "binary", payload: "\xff\xfe\x00\x01", err: "not text"},
		{name: "too large", payload: strings.Repeat("x", 1<<20), err: "over the"},
		{name: "invalid yaml", payload: "job_queue: [dut1\ntest_data: {", err: "invalid YAML"},
		{name: "invalid job", payload: "job_queue: dut1\ntest_data:\n  test_cmd: typo\n", err: "did you mean 'test_data.test_cmds'"},
		{name: "bad template", payload: "echo", template: "job_queue: [", err: "template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job, err := mqttbus.ParseSubmit("dut1", []byte(tc.payload), []byte(tc.template))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			td, _ := job["test_data"].(map[string]any)
			if job["job_queue"] != tc.queue || td["test_cmds"] != tc.cmds {
				t.Errorf("job = %v", job)
			}
		})
	}
}

// FuzzParseSubmit: no payload makes the parser panic, and what it accepts
// always names a queue.
func FuzzParseSubmit(f *testing.F) {
	for _, s := range []string{"echo hi", "job_queue: x\n", `{"job_queue": "x"}`, "a: [", "\x00", "- a\n- b", "test_data: {test_cmds: [a, b]}", "job_queue: &a [*a]", "{{{{"} {
		f.Add([]byte(s), []byte(template))
	}
	f.Fuzz(func(t *testing.T, payload, tmpl []byte) {
		job, err := mqttbus.ParseSubmit("dut1", payload, tmpl)
		if err == nil {
			if q, _ := job["job_queue"].(string); q == "" {
				t.Errorf("accepted job without a string job_queue: %v", job)
			}
		}
	})
}
