// Package runtime is labsync's side of the Docker engine: it observes the
// objects labsync manages (found by label, never by name), creates, starts,
// stops, renames and removes containers with their files copied in, and
// builds images from a repository's build contexts. It decides nothing.
package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/client"

	"github.com/labsync/labsync/lab"
)

// Labels stamped on every object labsync creates. An object is managed only
// when it carries LabelManaged and its lab's LabelLab.
const (
	LabelManaged  = "io.labsync.managed"
	LabelLab      = "io.labsync.lab"
	LabelKind     = "io.labsync.kind"
	LabelObject   = "io.labsync.object"
	LabelHash     = "io.labsync.spec-hash"
	LabelFields   = "io.labsync.fields"
	LabelRevision = "io.labsync.revision"
	LabelSchema   = "io.labsync.schema"
	LabelDevice   = "io.labsync.device"
	// LabelSource says which lab made a container: the URL of its
	// repository, without credentials. Two labs of one name on one engine
	// are told apart by it.
	LabelSource = "io.labsync.source"
)

// AsideSuffix is appended to the name of a container that a recreate has
// stopped and set aside, so it can be restored if the new one fails.
const AsideSuffix = lab.AsideSuffix

// Options configure a Client.
type Options struct {
	// Host is the Docker host (unix:///var/run/docker.sock, tcp://...);
	// empty means DOCKER_HOST or the default socket.
	Host string
	// Logger receives build progress and notable events.
	Logger *slog.Logger
	// Secrets resolves the secret names of container specs at create time.
	Secrets SecretSource
}

// Client talks to one Docker engine.
type Client struct {
	api     *client.Client
	log     *slog.Logger
	secrets SecretSource
	calls   *callCounter

	// agentBinLocks holds one lock per labsync-agent volume, so agents
	// created at the same time fill it once.
	agentBinMu    sync.Mutex
	agentBinLocks map[string]*sync.Mutex
}

// New connects to the Docker engine. The API version is negotiated on the
// first call, so older engines work.
func New(opts Options) (*Client, error) {
	hostOpts := []client.Opt{client.FromEnv}
	if opts.Host != "" {
		hostOpts = append(hostOpts, client.WithHost(opts.Host))
	}
	base, err := client.NewClientWithOpts(hostOpts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	counter := &callCounter{next: base.HTTPClient().Transport}
	apiOpts := append(hostOpts, client.WithHTTPClient(&http.Client{Transport: counter}), client.WithAPIVersionNegotiation())
	if os.Getenv("DOCKER_CERT_PATH") != "" || os.Getenv("DOCKER_TLS_VERIFY") != "" {
		apiOpts = append(apiOpts, client.WithScheme("https"))
	}
	api, err := client.NewClientWithOpts(apiOpts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	// Negotiate the API version now, before any goroutine shares the
	// client: lazy negotiation from concurrent calls races.
	nctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	api.NegotiateAPIVersion(nctx)
	cancel()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secrets := opts.Secrets
	if secrets == nil {
		secrets = EnvSecrets{}
	}
	return &Client{api: api, log: log, secrets: secrets, calls: counter}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.api.Close() }

// Ping checks that the engine answers.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.api.Ping(ctx); err != nil {
		return fmt.Errorf("docker ping: %w", err)
	}
	return nil
}

// API exposes the underlying Docker client for tests and tools that inspect
// what labsync did.
func (c *Client) API() *client.Client { return c.api }

// Calls returns the number of Docker API requests made so far: reads (GET
// and HEAD) and writes (everything else).
func (c *Client) Calls() (reads, writes int64) {
	return c.calls.reads.Load(), c.calls.writes.Load()
}

// callCounter counts API requests by whether they can change anything.
type callCounter struct {
	next          http.RoundTripper
	reads, writes atomic.Int64
}

func (c *callCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		c.reads.Add(1)
	} else {
		c.writes.Add(1)
	}
	return c.next.RoundTrip(r)
}
