package mqttbus

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/labsync/labsync/internal/yamlcheck"
	"github.com/labsync/labsync/testflinger"
)

// MaxSubmitPayload bounds a <sut>/submit payload.
const MaxSubmitPayload = 256 << 10

// looksLikeDocument matches payloads meant as a whole job: a JSON object,
// or YAML whose first line is "key: ...".
var looksLikeDocument = regexp.MustCompile(`^\s*(\{|[A-Za-z_][A-Za-z0-9_-]*\s*:(\s|$))`)

// ParseSubmit turns a <sut>/submit payload into the job to post. The
// payload is either the test_cmds text, put into template (sut/<name>.yaml;
// a minimal job for the SUT's first queue when there is none), or a whole
// job in YAML or JSON. A job without job_queue gets the template's, else
// the SUT's first queue. queues are the job_queues of the SUT's conf: a job
// (or a template) naming any other queue is refused, so a lab's broker
// cannot be used to feed another lab's queues. Payload and template are
// parsed under yamlcheck's bounds (size, depth, aliases and merges).
func ParseSubmit(sut string, payload, template []byte, queues []string) (map[string]any, error) {
	switch {
	case len(bytes.TrimSpace(payload)) == 0:
		return nil, errors.New("empty payload: send the test_cmds text, or a whole job in YAML or JSON")
	case len(payload) > MaxSubmitPayload:
		return nil, fmt.Errorf("payload is %d bytes, over the %d-byte limit", len(payload), MaxSubmitPayload)
	case !utf8.Valid(payload) || bytes.IndexByte(payload, 0) >= 0:
		return nil, errors.New("payload is not text (invalid UTF-8 or NUL bytes)")
	case len(queues) == 0:
		return nil, fmt.Errorf("%s has no job_queues in its conf; no job can be submitted for it", sut)
	}
	base, err := templateJob(sut, template, queues)
	if err != nil {
		return nil, err
	}
	if looksLikeDocument.Match(payload) {
		doc, err := parseYAML(payload)
		if err != nil {
			return nil, fmt.Errorf("invalid YAML or JSON job: %v", err)
		}
		if job, ok := doc.(map[string]any); ok && isJob(job) {
			if _, ok := job["job_queue"]; !ok {
				job["job_queue"] = base["job_queue"]
			}
			if err := checkJob(job); err != nil {
				return nil, err
			}
			if q := job["job_queue"].(string); !slices.Contains(queues, q) {
				return nil, fmt.Errorf("job_queue %q is not a queue of %s (its queues: %s); jobs for other queues are not taken here", clip(q), sut, strings.Join(queues, ", "))
			}
			return job, nil
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

// MaxSubmitNodes bounds the YAML nodes of a submitted job or a job
// template; a real job has a few dozen.
const MaxSubmitNodes = 10_000

// parseYAML reads one YAML (or JSON) document under yamlcheck's bounds,
// then decodes it.
func parseYAML(data []byte) (any, error) {
	bounds := yamlcheck.DefaultBounds()
	bounds.MaxNodes, bounds.MaxAliasBytes = MaxSubmitNodes, MaxSubmitPayload
	n, f := yamlcheck.ParseBounded(data, bounds)
	if f != nil {
		return nil, fmt.Errorf("line %d: %s", f.Line, strings.TrimPrefix(f.Msg, "invalid YAML: "))
	}
	if n == nil {
		return nil, nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return v, nil
}

func isJob(m map[string]any) bool {
	for _, k := range []string{"job_queue", "test_data", "provision_data", "reserve_data", "allocate_data", "firmware_update_data"} {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// templateJob reads the SUT's job template; without one, or without a
// job_queue in it, the job goes to the SUT's first queue. A template
// naming a queue outside queues is refused.
func templateJob(sut string, template []byte, queues []string) (map[string]any, error) {
	job := map[string]any{}
	if len(bytes.TrimSpace(template)) > 0 {
		doc, err := parseYAML(template)
		if err != nil {
			return nil, fmt.Errorf("the job template of %s is invalid: %v", sut, err)
		}
		switch d := doc.(type) {
		case nil: // a null document
		case map[string]any:
			job = d
		default:
			return nil, fmt.Errorf("the job template of %s is invalid: it is not a mapping", sut)
		}
	}
	if _, ok := job["job_queue"]; !ok {
		job["job_queue"] = queues[0]
		return job, nil
	}
	if err := checkQueue(job); err != nil {
		return nil, fmt.Errorf("the job template of %s: %v", sut, err)
	}
	if q := job["job_queue"].(string); !slices.Contains(queues, q) {
		return nil, fmt.Errorf("the job template of %s names job_queue %q, which is not one of its queues (%s); fix sut/%s.yaml", sut, clip(q), strings.Join(queues, ", "), sut)
	}
	return job, nil
}

// checkQueue makes job_queue a string: YAML reads a numeric queue name as
// a number.
func checkQueue(job map[string]any) error {
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
	return nil
}

// checkJob applies Testflinger's job rules; a job_queue YAML read as a
// number becomes its text.
func checkJob(job map[string]any) error {
	if err := checkQueue(job); err != nil {
		return err
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
