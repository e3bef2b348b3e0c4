package forge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/labsync/labsync/reconciler"
)

// Drift is one difference between the lab host and the applied revision
// that a pass could not correct.
type Drift struct {
	Object  string   // kind/name
	Reason  string   // what differs
	Sources []string // repository files that define the object
}

// Fingerprint identifies a drift across passes.
func (d Drift) Fingerprint() string {
	sum := sha256.Sum256([]byte(d.Object + "\x00" + d.Reason))
	return hex.EncodeToString(sum[:8])
}

// DriftsOf lists what a plan still wants to change after a pass. Changes
// the pass deferred (an agent running a job) are waiting, not drift.
func DriftsOf(p *reconciler.Changeset, results []reconciler.Result) []Drift {
	if p == nil {
		return nil
	}
	deferred := map[string]bool{}
	for _, r := range results {
		if r.Status == reconciler.StatusDeferred {
			deferred[r.Action.ObjectKind+"/"+r.Action.Object] = true
		}
	}
	var out []Drift
	for _, a := range p.Actions {
		if a.ObjectKind != "agent" && a.ObjectKind != "service" || deferred[a.ObjectKind+"/"+a.Object] {
			continue
		}
		d := Drift{Object: a.ObjectKind + "/" + a.Object, Reason: string(a.Kind) + ": " + strings.Join(a.Reasons, "; ")}
		if a.Spec != nil {
			d.Sources = a.Spec.Sources
		}
		out = append(out, d)
	}
	return out
}

// History finds the last commit that changed some paths.
type History interface {
	LastCommitTouching(from string, paths []string) (string, error)
}

// DriftOptions configure a DriftReporter.
type DriftOptions struct {
	GitHub  *Client
	History History
	Lab     string
	// StateFile keeps what was reported across restarts, so a drift is
	// never reported twice.
	StateFile string
	Logger    *slog.Logger
}

// DriftReporter reports drift that persists over two checks on the pull
// request that last changed the drifted object's files, or in the
// labsync-drift issue, and edits the report when the drift is resolved.
type DriftReporter struct {
	opts DriftOptions
	log  *slog.Logger
	mu   sync.Mutex
	st   driftState
}

type driftState struct {
	// Seen counts consecutive checks each drift was seen in.
	Seen map[string]int `json:"seen"`
	// Reported maps a drift to where it was reported.
	Reported map[string]driftReport `json:"reported"`
}

type driftReport struct {
	Number int    `json:"number"` // pull request or issue
	Object string `json:"object"`
	Reason string `json:"reason"`
}

// NewDriftReporter loads the reporter's state.
func NewDriftReporter(o DriftOptions) *DriftReporter {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &DriftReporter{opts: o, log: o.Logger, st: driftState{Seen: map[string]int{}, Reported: map[string]driftReport{}}}
	if data, err := os.ReadFile(o.StateFile); err == nil {
		if err := json.Unmarshal(data, &r.st); err != nil {
			r.log.Warn("drift state unreadable; starting afresh", "file", o.StateFile, "err", err)
		}
		if r.st.Seen == nil {
			r.st.Seen = map[string]int{}
		}
		if r.st.Reported == nil {
			r.st.Reported = map[string]driftReport{}
		}
	}
	return r
}

func driftMarker(labName, fp string) string {
	return fmt.Sprintf("<!-- labsync:lab=%s:drift=%s -->", labName, fp)
}

// Check records the drifts of one check at revision and reports what
// changed on GitHub. It returns the first GitHub error; the state stays
// consistent, and what failed is tried again at the next check.
func (r *DriftReporter) Check(ctx context.Context, revision string, drifts []Drift) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	current := map[string]Drift{}
	for _, d := range drifts {
		current[d.Fingerprint()] = d
	}
	var firstErr error
	keep := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	fps := make([]string, 0, len(current))
	for fp := range current {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	for _, fp := range fps {
		d := current[fp]
		r.st.Seen[fp]++
		if r.st.Seen[fp] < 2 {
			continue
		}
		if _, done := r.st.Reported[fp]; done {
			continue // never repeated
		}
		n, err := r.report(ctx, revision, fp, d)
		if err != nil {
			keep(err)
			continue
		}
		r.st.Reported[fp] = driftReport{Number: n, Object: d.Object, Reason: d.Reason}
	}
	var gone []string
	for fp := range r.st.Seen {
		if _, still := current[fp]; !still {
			gone = append(gone, fp)
		}
	}
	for fp := range r.st.Reported {
		if _, still := current[fp]; !still && !slices.Contains(gone, fp) {
			gone = append(gone, fp)
		}
	}
	sort.Strings(gone)
	for _, fp := range gone {
		delete(r.st.Seen, fp)
		if rep, ok := r.st.Reported[fp]; ok {
			body := fmt.Sprintf("%s\n### labsync · `%s` · drift resolved ✅\n\n~~%s: %s~~\n\nThe lab host matches the repository again.\n", driftMarker(r.opts.Lab, fp), r.opts.Lab, cell(rep.Object), cell(Redact(rep.Reason)))
			if _, err := r.opts.GitHub.UpsertComment(ctx, rep.Number, driftMarker(r.opts.Lab, fp), body); err != nil {
				keep(err) // still reported: the edit is tried again next check
				continue
			}
			delete(r.st.Reported, fp)
		}
	}
	keep(r.save())
	return firstErr
}

func (r *DriftReporter) report(ctx context.Context, revision, fp string, d Drift) (int, error) {
	gh := r.opts.GitHub
	number := 0
	if len(d.Sources) > 0 && r.opts.History != nil {
		if sha, err := r.opts.History.LastCommitTouching(revision, d.Sources); err == nil && sha != "" {
			prs, err := gh.PullsForCommit(ctx, sha)
			if err != nil {
				return 0, err // GitHub's trouble: try again next check, not the issue
			}
			if len(prs) > 0 {
				number = prs[0]
			}
		}
	}
	where := "pull request"
	if number == 0 {
		n, err := gh.DriftIssue(ctx, r.opts.Lab)
		if err != nil {
			return 0, err
		}
		number, where = n, "issue"
	}
	body := fmt.Sprintf("%s\n### labsync · `%s` · drift ⚠️\n\nThe lab host differs from revision `%s` and labsync could not correct it over two checks:\n\n**%s**: %s\n\nThis comment is edited when the drift is resolved.\n",
		driftMarker(r.opts.Lab, fp), r.opts.Lab, short(revision), cell(d.Object), cell(Redact(d.Reason)))
	if _, err := gh.UpsertComment(ctx, number, driftMarker(r.opts.Lab, fp), body); err != nil {
		return 0, err
	}
	r.log.Info("drift reported", "object", d.Object, where, number)
	return number, nil
}

func (r *DriftReporter) save() error {
	if r.opts.StateFile == "" {
		return nil
	}
	data, err := json.Marshal(r.st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.opts.StateFile), 0o755); err != nil {
		return err
	}
	tmp := r.opts.StateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, r.opts.StateFile)
}
