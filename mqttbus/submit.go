package mqttbus

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/testflinger"
)

// MaxSubmitPayload bounds a <sut>/submit payload.
const MaxSubmitPayload = 256 << 10

// looksLikeDocument matches payloads meant as a whole job: a JSON object,
// or YAML whose first line is "key: ...".
var looksLikeDocument = regexp.MustCompile(`^\s*(\{|[A-Za-z_][A-Za-z0-9_-]*\s*:(\s|$))`)

// ParseSubmit turns a <sut>/submit payload into the job to post. The
// payload is either the test_cmds text, put into template (sut/<name>.yaml;
// a minimal job for the SUT's queue when there is none), or a whole job in
// YAML or JSON. A job without job_queue gets the template's or the SUT's.
func ParseSubmit(sut string, payload, template []byte) (map[string]any, error) {
	switch {
	case len(bytes.TrimSpace(payload)) == 0:
		return nil, errors.New("empty payload: send the test_cmds text, or a whole job in YAML or JSON")
	case len(payload) > MaxSubmitPayload:
		return nil, fmt.Errorf("payload is %d bytes, over the %d-byte limit", len(payload), MaxSubmitPayload)
	case !utf8.Valid(payload) || bytes.IndexByte(payload, 0) >= 0:
		return nil, errors.New("payload is not text (invalid UTF-8 or NUL bytes)")
	}
	base, err := templateJob(sut, template)
	if err != nil {
		return nil, err
	}
	if looksLikeDocument.Match(payload) {
		var doc any
		if err := yaml.Unmarshal(payload, &doc); err != nil {
			return nil, fmt.Errorf("invalid YAML or JSON job: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		if job, ok := doc.(map[string]any); ok && isJob(job) {
			if _, ok := job["job_queue"]; !ok {
				job["job_queue"] = base["job_queue"]
			}
			return job, checkJob(job)
		}
	}
	job := base
	td, _ := job["test_data"].(map[string]any)
	if td == nil {
		td = map[string]any{}
	}
	td["test_cmds"] = string(payload)
	job["test_data"] = td
	return job, checkJob(job)
}

func isJob(m map[string]any) bool {
	for _, k := range []string{"job_queue", "test_data", "provision_data", "reserve_data", "allocate_data", "firmware_update_data"} {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

func templateJob(sut string, template []byte) (map[string]any, error) {
	job := map[string]any{}
	if len(bytes.TrimSpace(template)) > 0 {
		if err := yaml.Unmarshal(template, &job); err != nil {
			return nil, fmt.Errorf("the job template of %s is invalid: %v", sut, err)
		}
		if job == nil { // a null document
			job = map[string]any{}
		}
	}
	if _, ok := job["job_queue"]; !ok {
		job["job_queue"] = sut
	}
	return job, nil
}

// checkJob applies Testflinger's job rules; a job_queue YAML read as a
// number becomes its text.
func checkJob(job map[string]any) error {
	switch q := job["job_queue"].(type) {
	case string:
		if strings.TrimSpace(q) == "" {
			return errors.New("invalid job: job_queue is empty")
		}
	case int, int64, uint64, float64:
		job["job_queue"] = fmt.Sprint(q)
	default:
		return fmt.Errorf("invalid job: job_queue must be a queue name, not %T", q)
	}
	var n yaml.Node
	if err := n.Encode(job); err != nil {
		return fmt.Errorf("job: %w", err)
	}
	var msgs []string
	for _, f := range testflinger.CheckJob(&n) {
		if !f.Warning {
			msgs = append(msgs, f.Msg)
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("invalid job: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// SubmitStatus is the payload of <sut>/submit_status.
type SubmitStatus struct {
	// State is submitted, error, or a Testflinger job_state (waiting,
	// provision, test, ..., complete, cancelled).
	State string `json:"state"`
	JobID string `json:"job_id,omitempty"`
	Error string `json:"error,omitempty"`
	Time  string `json:"time"`
}
