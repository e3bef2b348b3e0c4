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
