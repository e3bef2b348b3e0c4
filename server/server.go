// Package server is labsync's HTTP face: GitHub and generic webhooks that
// trigger passes, health and readiness probes, Prometheus metrics, a JSON
// API and a server-rendered status page. It never changes Docker itself.
package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// StatusSource is what the server reads: the controller.
type StatusSource interface {
	Status() reconciler.LabStatus
	Runs() []reconciler.Run
}

// Options configure a Server.
type Options struct {
	Status StatusSource
	// Sync, when set, is what an operator's sync request calls: a
	// trigger that also retries what failed before. Trigger otherwise.
	Sync    func(reason string)
	Trigger func(reason string)
	// Branch is the tracked branch; pushes to others are ignored.
	Branch string
	// WebhookSecret checks GitHub signatures; WebhookToken is the bearer
	// token of /hooks/generic. /hooks/github is served when a secret is
	// set or Insecure allows it without; /hooks/generic when a token is
	// set, or Insecure allows it without and no GitHub secret is set (a
	// secret means the operator wants webhooks authenticated).
	WebhookSecret []byte
	WebhookToken  []byte
	Insecure      bool
	// APIToken is the bearer token of the mutating API endpoints
	// (POST /api/v1/sync). Without one they refuse every request.
	APIToken []byte
	// Ready checks the dependencies of /readyz besides the first fetch
	// (Docker reachable).
	Ready func(ctx context.Context) error
	// PullRequest, when set, receives opened, synchronized and reopened
	// pull requests for planning.
	PullRequest func(number int, head string, fork bool)
	Logger      *slog.Logger
}

// Server serves labsync's HTTP endpoints.
type Server struct {
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	seen    deliveries
	metrics *metrics
}

// New builds the server and registers its metrics.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux(), seen: deliveries{max: 1000}, metrics: newMetrics()}
	github := endpointAuth(len(opts.WebhookSecret) > 0, opts.Insecure, "signature")
	generic := endpointAuth(len(opts.WebhookToken) > 0, opts.Insecure && len(opts.WebhookSecret) == 0, "bearer token")
	if github != "off" {
		s.mux.HandleFunc("POST /hooks/github", s.handleGitHub)
	}
	if generic != "off" {
		s.mux.HandleFunc("POST /hooks/generic", s.handleGeneric)
	}
	api := endpointAuth(len(opts.APIToken) > 0, false, "bearer token")
	level := slog.LevelInfo
	if github == "unauthenticated" || generic == "unauthenticated" || api == "off" {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "http endpoints that trigger work", "/hooks/github", github, "/hooks/generic", generic, "/api/v1/sync", api)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.handleReady)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /api/v1/status", s.handleStatus)
	s.mux.HandleFunc("GET /api/v1/agents", s.handleAgents)
	s.mux.HandleFunc("GET /api/v1/runs", s.handleRuns)
	s.mux.HandleFunc("GET /api/v1/plan", s.handlePlan)
	s.mux.HandleFunc("POST /api/v1/sync", s.mutating("sync", s.handleSync))
	s.mux.HandleFunc("GET /{$}", s.handlePage)
	return s
}

// SetPullRequestHandler sets Options.PullRequest after New.
func (s *Server) SetPullRequestHandler(f func(number int, head string, fork bool)) {
	s.opts.PullRequest = f
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) webhook(result string) { s.metrics.webhooks.WithLabelValues(result).Inc() }

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	st := s.opts.Status.Status()
	if !st.Ready {
		http.Error(w, "not ready: the repository was not fetched yet", http.StatusServiceUnavailable)
		return
	}
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	w.Write([]byte("ready\n"))
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request) {
	s.log.Info("api: sync requested", "remote", r.RemoteAddr)
	if s.opts.Sync != nil {
		s.opts.Sync("api: sync")
	} else {
		s.opts.Trigger("api: sync")
	}
	writeJSON(w, http.StatusAccepted, hookReply{Status: "accepted", Detail: "a pass is queued"})
}

// StatusView is the JSON of /api/v1/status.
type StatusView = reconciler.Summary

func statusView(st reconciler.LabStatus) StatusView { return st.Summary() }

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, statusView(s.opts.Status.Status()))
}

// ObjectView is one agent or service in /api/v1/agents and on the page.
type ObjectView = reconciler.ObjectStatus

func objectsView(st reconciler.LabStatus) []ObjectView { return st.Objects() }

func (s *Server) handleAgents(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, objectsView(s.opts.Status.Status()))
}

// RunView is one pass in /api/v1/runs.
type RunView struct {
	ID          int64     `json:"id"`
	Started     time.Time `json:"started"`
	DurationMS  int64     `json:"duration_ms"`
	Triggers    []string  `json:"triggers"`
	Revision    string    `json:"revision"`
	Applied     string    `json:"applied,omitempty"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	Actions     int       `json:"actions"`
	Failed      int       `json:"failed"`
	Diagnostics []string  `json:"diagnostics,omitempty"`
}

func runViews(runs []reconciler.Run) []RunView {
	out := make([]RunView, 0, len(runs))
	for _, r := range runs {
		v := RunView{ID: r.ID, Started: r.Started, DurationMS: r.Duration.Milliseconds(), Triggers: r.Triggers, Revision: r.Revision, Applied: r.Applied, Result: r.Result, Error: r.Error}
		if r.Plan != nil {
			v.Actions = len(r.Plan.Actions)
		}
		for _, res := range r.Results {
			if res.Status != reconciler.StatusOK {
				v.Failed++
			}
		}
		for _, d := range r.Diagnostics {
			if d.Severity == lab.SeverityError {
				v.Diagnostics = append(v.Diagnostics, d.String())
			}
		}
		out = append(out, v)
	}
	return out
}

func (s *Server) handleRuns(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, runViews(s.opts.Status.Runs()))
}

func (s *Server) handlePlan(w http.ResponseWriter, r *http.Request) {
	st := s.opts.Status.Status()
	if st.Plan == nil {
		writeJSON(w, http.StatusNotFound, hookReply{Status: "none", Detail: "no pass has planned yet"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st.Plan)
}

// ObserveRun updates the metrics after a pass.
func (s *Server) ObserveRun(run reconciler.Run) {
	m := s.metrics
	m.passDuration.Observe(run.Duration.Seconds())
	m.passes.WithLabelValues(run.Result).Inc()
	if run.Fetched {
		m.fetchDuration.Observe(run.FetchTime.Seconds())
	}
	st := s.opts.Status.Status()
	if !st.LastOK.IsZero() {
		m.lastSuccess.Set(float64(st.LastOK.Unix()))
	}
	drifted := 0
	if st.Plan != nil {
		drifted = len(st.Plan.Actions)
	}
	m.drifted.Set(float64(drifted))
	m.containers.Reset()
	if st.Observed != nil {
		for _, c := range st.Observed.Containers {
			m.containers.WithLabelValues(c.State).Inc()
		}
	}
}

type metrics struct {
	reg           *prometheus.Registry
	passDuration  prometheus.Histogram
	passes        *prometheus.CounterVec
	lastSuccess   prometheus.Gauge
	drifted       prometheus.Gauge
	containers    *prometheus.GaugeVec
	webhooks      *prometheus.CounterVec
	api           *prometheus.CounterVec
	fetchDuration prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		passDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "labsync_pass_duration_seconds", Help: "Duration of reconcile passes.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}}),
		passes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "labsync_passes_total", Help: "Reconcile passes by result (ok, failed, invalid, error)."}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "labsync_last_success_timestamp_seconds", Help: "Unix time of the last pass that converged the host."}),
		drifted:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "labsync_drifted_objects", Help: "Actions still planned after the last pass (objects that differ from the lab)."}),
		containers:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "labsync_managed_containers", Help: "Managed containers by Docker state, after the last pass."}, []string{"state"}),
		webhooks:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "labsync_webhook_deliveries_total", Help: "Webhook deliveries by result."}, []string{"result"}),
		api:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "labsync_api_requests_total", Help: "Requests to mutating API endpoints by endpoint and result."}, []string{"endpoint", "result"}),
		fetchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "labsync_git_fetch_duration_seconds", Help: "Duration of git fetches (only when the remote head moved).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}}),
	}
	m.reg.MustRegister(m.passDuration, m.passes, m.lastSuccess, m.drifted, m.containers, m.webhooks, m.api, m.fetchDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
