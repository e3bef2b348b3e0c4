package testflinger

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to a Testflinger server's REST API.
type Client struct {
	// BaseURL is the server, e.g. http://testflinger:8000.
	BaseURL string
	HTTP    *http.Client
}

// NewClient returns a client of the server at base (http:// assumed).
func NewClient(base string) *Client {
	return &Client{BaseURL: strings.TrimRight(NormalizeServer(base), "/"), HTTP: &http.Client{Timeout: 15 * time.Second}}
}

// AgentState is what the server knows of an agent.
type AgentState struct {
	// State is the agent's phase: waiting, setup, provision, test,
	// reserve, cleanup, offline, maintenance, ...
	State string `json:"state"`
	JobID string `json:"job_id"`
}

// Idle reports whether the agent runs no job: it waits for one, or is
// offline or in maintenance.
func (s AgentState) Idle() bool {
	switch s.State {
	case "waiting", "offline", "maintenance", "":
		return s.JobID == ""
	}
	return false
}

// AgentState reads GET /v1/agents/data/<agent>.
func (c *Client) AgentState(ctx context.Context, agent string) (AgentState, error) {
	var st AgentState
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/agents/data/"+url.PathEscape(agent), nil)
	if err != nil {
		return st, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return st, fmt.Errorf("testflinger agent state of %s: %w", agent, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("testflinger agent state of %s: %s", agent, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("testflinger agent state of %s: %w", agent, err)
	}
	return st, nil
}

// SubmitJob posts a job (as testflinger-cli submit does) to POST /v1/job
// and returns its id.
func (c *Client) SubmitJob(ctx context.Context, job map[string]any) (string, error) {
	body, err := json.Marshal(job)
	if err != nil {
		return "", fmt.Errorf("encode job: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/v1/job", strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("submit job: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("submit job: %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	var out struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(data, &out); err != nil || out.JobID == "" {
		return "", fmt.Errorf("submit job: no job_id in the answer %q", strings.TrimSpace(string(data)))
	}
	return out.JobID, nil
}

// JobState reads job_state from GET /v1/result/<id>.
func (c *Client) JobState(ctx context.Context, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/result/"+url.PathEscape(id), nil)
	if err != nil {
		return "", err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("job %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("job %s: %s", id, resp.Status)
	}
	var out struct {
		JobState string `json:"job_state"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&out); err != nil {
		return "", fmt.Errorf("job %s: %w", id, err)
	}
	return out.JobState, nil
}

// FinalJobState reports whether a job state is one a job never leaves.
func FinalJobState(s string) bool {
	switch s {
	case "complete", "completed", "cancelled":
		return true
	}
	return false
}
