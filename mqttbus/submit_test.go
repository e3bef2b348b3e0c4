package mqttbus_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/labsync/labsync/mqttbus"
)

const template = "job_queue: dut1\nprovision_data:\n  distro: noble\ntest_data:\n  test_cmds: replaced\n  attachments: []\n"

// queues are the job_queues of dut1's conf in these tests.
var queues = []string{"dut1", "dut1-alt"}

func TestParseSubmit(t *testing.T) {
	for _, tc := range []struct {
		name, payload, template string
		queues                  []string // default: queues
		queue, cmds             string
		err                     string
	}{
		{name: "text into template", payload: "echo hi\nls -la", template: template, queue: "dut1", cmds: "echo hi\nls -la"},
		{name: "text without template", payload: "checkbox-cli run x", queue: "dut1", cmds: "checkbox-cli run x"},
		{name: "text without template gets the first queue", payload: "true", queues: []string{"q-a", "q-b"}, queue: "q-a", cmds: "true"},
		{name: "text with a colon", payload: "echo: not a job", queue: "dut1", cmds: "echo: not a job"},
		{name: "yaml job on another queue of the SUT", payload: "job_queue: dut1-alt\ntest_data:\n  test_cmds: uname -a\n", queue: "dut1-alt", cmds: "uname -a"},
		{name: "json job without queue", payload: `{"test_data": {"test_cmds": "true"}}`, template: template, queue: "dut1", cmds: "true"},
		{name: "job without queue, no template", payload: "test_data:\n  test_cmds: ls\n", queues: []string{"q-a", "q-b"}, queue: "q-a", cmds: "ls"},
		{name: "numeric queue", payload: "job_queue: 42\ntest_data: {test_cmds: x}\n", queues: []string{"42"}, queue: "42", cmds: "x"},
		{name: "foreign queue", payload: "job_queue: other\ntest_data:\n  test_cmds: uname -a\n", err: `job_queue "other" is not a queue of dut1 (its queues: dut1, dut1-alt)`},
		{name: "foreign queue in json", payload: `{"job_queue": "prod-lab-42", "test_data": {"test_cmds": "rm -rf /"}}`, err: `job_queue "prod-lab-42" is not a queue of dut1`},
		{name: "template names a foreign queue", payload: "echo", template: "job_queue: elsewhere\n", err: `the job template of dut1 names job_queue "elsewhere", which is not one of its queues (dut1, dut1-alt)`},
		{name: "SUT without queues", payload: "echo", queues: []string{}, err: "no job_queues"},
		{name: "empty", payload: "  \n", err: "empty payload"},
		{name: "binary", payload: "\xff\xfe\x00\x01", err: "not text"},
		{name: "too large", payload: strings.Repeat("x", 1<<20), err: "over the"},
		{name: "invalid yaml", payload: "job_queue: [dut1\ntest_data: {", err: "invalid YAML"},
		{name: "invalid job", payload: "job_queue: dut1\ntest_data:\n  test_cmd: typo\n", err: "did you mean 'test_data.test_cmds'"},
		{name: "bad template", payload: "echo", template: "job_queue: [", err: "template"},
		{name: "self-including merge", payload: "job_queue: dut1\ntest_data: &a\n  test_cmds: x\n  <<: *a\n", err: "invalid YAML"},
		{name: "billion laughs", payload: "job_queue: dut1\ntest_data: {test_cmds: x}\n" + laughs(9), err: "invalid YAML or JSON job"},
		{name: "billion laughs in the template", payload: "echo", template: "job_queue: dut1\n" + laughs(9), err: "the job template of dut1 is invalid"},
		{name: "a huge job", payload: `{"job_queue":"dut1","test_data":{"test_cmds":[` + strings.Repeat("1,", 60000) + `1]}}`, err: "more than 10000 YAML nodes"},
		{name: "several documents", payload: "job_queue: dut1\ntest_data: {test_cmds: x}\n---\njob_queue: other\n", err: "more than one YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := queues
			if tc.queues != nil {
				q = tc.queues
			}
			job, err := mqttbus.ParseSubmit("dut1", []byte(tc.payload), []byte(tc.template), q)
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

// laughs is a chain of n anchors, each ten aliases of the one before:
// 10^n nodes once expanded, from a few hundred bytes.
func laughs(n int) string {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 10), ", "))
	}
	return b.String()
}

// FuzzParseSubmit: no payload makes the parser panic, and what it accepts
// always names one of the SUT's queues.
func FuzzParseSubmit(f *testing.F) {
	for _, s := range []string{"echo hi", "job_queue: x\n", `{"job_queue": "x"}`, "a: [", "\x00", "- a\n- b", "test_data: {test_cmds: [a, b]}", "job_queue: &a [*a]", "{{{{", "job_queue: dut1-alt\ntest_data: {test_cmds: x}\n"} {
		f.Add([]byte(s), []byte(template))
	}
	f.Fuzz(func(t *testing.T, payload, tmpl []byte) {
		job, err := mqttbus.ParseSubmit("dut1", payload, tmpl, queues)
		if err == nil {
			q, _ := job["job_queue"].(string)
			if q != "dut1" && q != "dut1-alt" {
				t.Errorf("accepted a job for queue %q, not one of %v: %v", q, queues, job)
			}
		}
	})
}
