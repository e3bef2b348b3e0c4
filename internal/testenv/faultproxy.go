package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labsync/labsync/runtime"
)

// A FaultProxy is a unix socket in front of the real Docker engine that
// fails, delays or drops chosen API calls, at a rate drawn from a seeded
// generator, and holds the Nth call of a kind until the test releases it
// (or its client goes away). Everything else, streams and hijacked
// connections included, passes through unchanged. A client made with
// runtime.New(runtime.Options{Host: p.Host()}), or a process given
// DOCKER_HOST=p.Host(), talks through it.
//
// Which call gets a fault depends on the seed and the order calls arrive
// in: calls made one at a time get the same faults for the same seed. The
// seed and the faults injected are logged when the test fails.
type FaultProxy struct {
	t      testing.TB
	socket string
	seed   uint64
	srv    *http.Server
	rp     *httputil.ReverseProxy

	mu       sync.Mutex
	rng      *rand.Rand
	faults   []Fault
	matches  []compiledMatch
	holds    []*Hold
	calls    int
	injected []string
	byKind   map[FaultKind]int
}

// MethodMutating matches the methods that can change something: POST,
// PUT and DELETE.
const MethodMutating = "MUTATING"

// Match selects API calls.
type Match struct {
	// Method is an HTTP method, MethodMutating, or empty for any.
	Method string
	// Path is a regular expression matched against the request path
	// without the client's API version prefix: /containers/create,
	// /containers/<id>/rename. Empty matches any path.
	Path string
	// Query, when set, is a regular expression matched against the
	// unescaped query string (name=lab-alpha).
	Query string
}

func (m Match) String() string {
	s := m.Method
	if s == "" {
		s = "ANY"
	}
	s += " " + m.Path
	if m.Query != "" {
		s += "?" + m.Query
	}
	return s
}

// FaultKind says what a fault does to a call.
type FaultKind string

// Faults.
const (
	// FaultFail answers 500 with a Docker-style error body; the engine
	// never sees the call.
	FaultFail FaultKind = "fail"
	// FaultFailAfter forwards the call, then answers 500: the engine did
	// it, the client sees an error.
	FaultFailAfter FaultKind = "fail-after"
	// FaultDelay forwards the call after Fault.Delay.
	FaultDelay FaultKind = "delay"
	// FaultDrop closes the connection without forwarding the call.
	FaultDrop FaultKind = "drop"
	// FaultDropAfter forwards the call, then closes the connection before
	// the response.
	FaultDropAfter FaultKind = "drop-after"
)

// Fault is a kind of fault given to a share of the calls a Match selects.
type Fault struct {
	Match
	Kind FaultKind
	// Rate is the share of matching calls that get the fault, 0 to 1.
	// Faults share one draw per call: the first fault (in order) whose
	// cumulated rate covers the draw is given.
	Rate float64
	// Delay is how long FaultDelay holds a call back.
	Delay time.Duration
}

type compiledMatch struct {
	method      string
	path, query *regexp.Regexp
}

var apiVersion = regexp.MustCompile(`^/v[0-9]+(\.[0-9]+)*/`)

func compileMatch(m Match) compiledMatch {
	c := compiledMatch{method: m.Method}
	if m.Path != "" {
		c.path = regexp.MustCompile(m.Path)
	}
	if m.Query != "" {
		c.query = regexp.MustCompile(m.Query)
	}
	return c
}

func (c compiledMatch) matches(r *http.Request) bool {
	switch c.method {
	case "":
	case MethodMutating:
		if r.Method != http.MethodPost && r.Method != http.MethodPut && r.Method != http.MethodDelete {
			return false
		}
	default:
		if r.Method != c.method {
			return false
		}
	}
	if c.path != nil && !c.path.MatchString(apiPath(r)) {
		return false
	}
	if c.query != nil {
		q, err := url.QueryUnescape(r.URL.RawQuery)
		if err != nil {
			q = r.URL.RawQuery
		}
		if !c.query.MatchString(q) {
			return false
		}
	}
	return true
}

// apiPath is the request path without its /vX.Y prefix.
func apiPath(r *http.Request) string {
	return "/" + apiVersion.ReplaceAllString(r.URL.Path, "")
}

// Hold is a call held by a FaultProxy (see FaultProxy.Hold).
type Hold struct {
	match compiledMatch
	desc  string
	nth   int
	after bool
	seen  int

	// Held is closed when the call is held.
	Held chan struct{}
	// Done is closed when the held call has ended: dropped because its
	// client went away, or finished after Release.
	Done    chan struct{}
	release chan struct{}
	once    sync.Once

	mu      sync.Mutex
	call    string
	dropped bool
}

// Release lets the held call go on: forwarded (or, for a hold after the
// engine, answered).
func (h *Hold) Release() { h.once.Do(func() { close(h.release) }) }

// Call returns the held call, "METHOD path?query".
func (h *Hold) Call() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.call
}

// Dropped reports whether the held call was dropped, its client gone.
func (h *Hold) Dropped() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

func (h *Hold) String() string {
	when := "before the engine"
	if h.after {
		when = "after the engine"
	}
	return fmt.Sprintf("call %d of %s, held %s", h.nth, h.desc, when)
}

// engineSocket is the unix socket of the real engine.
func engineSocket() string {
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	return "/var/run/docker.sock"
}

// NewFaultProxy starts a proxy of the engine with the given faults and
// stops it when the test ends. A seed of 0 picks one at random; either
// way it is logged if the test fails.
func NewFaultProxy(t testing.TB, seed uint64, faults ...Fault) *FaultProxy {
	t.Helper()
	if seed == 0 {
		seed = rand.Uint64()
	}
	// A short folder of its own: unix socket paths are limited to 108
	// bytes, and test names make t.TempDir() long.
	dir, err := os.MkdirTemp("", "labsync-fp-")
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{t: t, socket: filepath.Join(dir, "docker.sock"), seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), byKind: map[FaultKind]int{}}
	p.SetFaults(faults...)
	engine := engineSocket()
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", engine)
		},
		MaxIdleConnsPerHost: 16,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "docker"
		},
		Transport: transport,
		// Streams (events, logs, build output) flow as they come.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() == nil {
				writeDockerError(w, http.StatusBadGateway, "fault proxy: engine: "+err.Error())
			}
		},
	}
	ln, err := net.Listen("unix", p.socket)
	if err != nil {
		t.Fatal(err)
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: time.Minute}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fault proxy: seed %d; %s", p.seed, p.Summary())
		}
		p.releaseAll()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.srv.Shutdown(ctx)
		_ = p.srv.Close()
		transport.CloseIdleConnections()
		_ = os.RemoveAll(dir)
	})
	return p
}

// Host is the proxy's Docker host, for runtime.Options.Host or DOCKER_HOST.
func (p *FaultProxy) Host() string { return "unix://" + p.socket }

// Seed returns the seed of the proxy's generator.
func (p *FaultProxy) Seed() uint64 { return p.seed }

// Client returns a labsync client of the engine through the proxy, closed
// when the test ends.
func (p *FaultProxy) Client(t testing.TB) *runtime.Client {
	t.Helper()
	rt, err := runtime.New(runtime.Options{Host: p.Host()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// SetFaults replaces the proxy's faults; none makes it a plain proxy.
func (p *FaultProxy) SetFaults(faults ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append([]Fault(nil), faults...)
	p.matches = p.matches[:0]
	for _, f := range faults {
		p.matches = append(p.matches, compileMatch(f.Match))
	}
}

// Hold holds the nth call (from 1) that m selects, from now on: before
// the engine sees it, or with after, once the engine has answered and
// before the client gets the answer. Hold.Held says when it is held; the
// call stays held until Release or until its client goes away (a killed
// process), and is then dropped.
func (p *FaultProxy) Hold(m Match, nth int, after bool) *Hold {
	h := &Hold{match: compileMatch(m), desc: m.String(), nth: nth, after: after,
		Held: make(chan struct{}), Done: make(chan struct{}), release: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holds = append(p.holds, h)
	return h
}

func (p *FaultProxy) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.holds {
		h.Release()
	}
}

// Injected returns the number of faults injected so far.
func (p *FaultProxy) Injected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.injected)
}

// Calls returns the number of calls the proxy has seen.
func (p *FaultProxy) Calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// Summary says how many calls the proxy saw and which faults it injected.
func (p *FaultProxy) Summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	kinds := make([]string, 0, len(p.byKind))
	for k, n := range p.byKind {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	s := fmt.Sprintf("%d calls, %d faults injected (%s)", p.calls, len(p.injected), strings.Join(kinds, ", "))
	if len(p.injected) > 0 {
		s += ":\n  " + strings.Join(p.injected, "\n  ")
	}
	return s
}

// decide picks what happens to r: a hold, a fault, or nothing.
func (p *FaultProxy) decide(r *http.Request) (*Hold, *Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	for _, h := range p.holds {
		if h.seen >= h.nth || !h.match.matches(r) {
			continue
		}
		h.seen++
		if h.seen == h.nth {
			return h, nil
		}
	}
	var matching []int
	for i := range p.faults {
		if p.matches[i].matches(r) {
			matching = append(matching, i)
		}
	}
	if len(matching) == 0 {
		return nil, nil
	}
	draw, sum := p.rng.Float64(), 0.0
	for _, i := range matching {
		sum += p.faults[i].Rate
		if draw < sum {
			f := p.faults[i]
			p.injected = append(p.injected, fmt.Sprintf("%s %s %s", f.Kind, r.Method, r.URL.RequestURI()))
			p.byKind[f.Kind]++
			return nil, &f
		}
	}
	return nil, nil
}

func (p *FaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	h, f := p.decide(r)
	switch {
	case h != nil:
		p.hold(w, r, h)
	case f == nil:
		p.rp.ServeHTTP(w, r)
	case f.Kind == FaultFail:
		drain(r)
		writeDockerError(w, http.StatusInternalServerError, "fault injected: "+r.Method+" "+apiPath(r))
	case f.Kind == FaultDrop:
		dropConn(w)
	case f.Kind == FaultDelay:
		select {
		case <-time.After(f.Delay):
			p.rp.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	case f.Kind == FaultFailAfter, f.Kind == FaultDropAfter:
		rec := newRecorder()
		p.rp.ServeHTTP(rec, r)
		if f.Kind == FaultDropAfter {
			dropConn(w)
			return
		}
		writeDockerError(w, http.StatusInternalServerError, fmt.Sprintf("fault injected after the engine answered %d: %s %s", rec.status, r.Method, apiPath(r)))
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// hold holds r until it is released or its client goes away.
func (p *FaultProxy) hold(w http.ResponseWriter, r *http.Request, h *Hold) {
	defer close(h.Done)
	// The body is read first: the server notices a client gone only
	// once it has read the whole request.
	if r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			h.mu.Lock()
			h.dropped = true
			h.mu.Unlock()
			close(h.Held)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	var rec *recorder
	if h.after {
		rec = newRecorder()
		// The engine's answer arrives even if the client has gone.
		p.rp.ServeHTTP(rec, r.WithContext(context.WithoutCancel(r.Context())))
	}
	h.mu.Lock()
	h.call = r.Method + " " + apiPath(r)
	if r.URL.RawQuery != "" {
		h.call += "?" + r.URL.RawQuery
	}
	h.mu.Unlock()
	close(h.Held)
	select {
	case <-h.release:
	case <-r.Context().Done():
	}
	if r.Context().Err() != nil {
		h.mu.Lock()
		h.dropped = true
		h.mu.Unlock()
		dropConn(w)
		return
	}
	if rec == nil {
		p.rp.ServeHTTP(w, r)
		return
	}
	rec.replay(w)
}

func drain(r *http.Request) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
}

// writeDockerError answers as the engine does when it fails: a JSON body
// with a message.
func writeDockerError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// dropConn closes the client's connection without an answer.
func dropConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// recorder keeps a response to give it later, or never.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}, status: http.StatusOK} }

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }
func (r *recorder) Flush()                      {}

func (r *recorder) replay(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body.Bytes())
}
