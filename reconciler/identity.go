package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/runtime"
)

// A lab is known on an engine by its name: labsync sees only the
// containers labelled with it. Two labs of one name would take each
// other's containers for their own (and prune them); a lab whose name
// changed would no longer see its old containers, nor the devices they
// drive. So a daemon records the lab it runs (IdentityFile) and stamps
// its repository on every container it makes (runtime.LabelSource), and
// before it applies a lab name for the first time it checks both ways.

// labRecord is what a daemon records of its lab.
type labRecord struct {
	Name string `json:"name"`
	// Sources are the repositories the lab was run from: a repository
	// that moved keeps its old containers' LabelSource.
	Sources []string `json:"sources"`
	// Adopting are old names of the lab whose containers are being taken
	// over (--adopt-lab): the takeover goes on after a restart.
	Adopting []string `json:"adopting,omitempty"`
}

// IdentityError is a lab that cannot be applied on this engine as it is:
// another lab has its name, or its own containers run under an older
// name. A human must act; the error says how.
type IdentityError struct{ Msg string }

func (e *IdentityError) Error() string { return e.Msg }

func readLabRecord(path string) (labRecord, error) {
	var r labRecord
	if path == "" {
		return r, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w; remove it and start with --adopt-lab if the lab was renamed", path, err)
	}
	return r, nil
}

// siblingRecords returns the labs recorded beside path, by name, with
// their first repository.
func siblingRecords(path string) (map[string]string, error) {
	out := map[string]string{}
	if path == "" {
		return out, nil
	}
	files, err := filepath.Glob(filepath.Join(filepath.Dir(path), "*.json"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if f == path {
			continue
		}
		r, err := readLabRecord(f)
		if err != nil || r.Name == "" {
			continue // another daemon's file: not ours to judge
		}
		src := ""
		if len(r.Sources) > 0 {
			src = r.Sources[0]
		}
		out[r.Name] = src
	}
	return out, nil
}

func writeLabRecord(path string, r labRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkIdentity makes sure that the lab of desired may be applied, from
// obs, what the engine has of its name: no container of it comes from
// another repository (checked every pass, at no cost), and no container
// of this lab runs under another name (checked once per lab name), unless
// ControllerOptions.AdoptLab names it: then its containers are taken over.
func (c *Controller) checkIdentity(ctx context.Context, desired *lab.Desired, obs *runtime.Observed) error {
	first := c.identityChecked != desired.Lab
	if first {
		if err := c.establishIdentity(ctx, desired); err != nil {
			return err
		}
	}
	if c.opts.Identity == "" {
		return nil
	}
	grew := false
	for _, o := range obs.Containers {
		if o.Source == "" || slices.Contains(c.record.Sources, o.Source) {
			continue
		}
		// Taken as the lab's own only in the pass that starts the lab
		// under --adopt-lab: a lab of the name that comes later is
		// another lab, even with the flag left on.
		if c.opts.AdoptLab != desired.Lab || !first {
			return &IdentityError{Msg: fmt.Sprintf("lab %s: container %s on this engine belongs to another lab of that name, from %s; two labs must not share a name on one engine: give this one another name (name: in lab.yaml). If it is this lab, whose repository moved from there, start labsync once with --adopt-lab %s",
				desired.Lab, o.Name, o.Source, desired.Lab)}
		}
		c.record.Sources, grew = append(c.record.Sources, o.Source), true
	}
	if grew {
		return c.saveRecord()
	}
	return nil
}

// establishIdentity reads the lab's record, finds the lab's containers
// under other names (the recorded one, one being taken over, those
// stamped with this lab's repository, and AdoptLab), and records the lab.
func (c *Controller) establishIdentity(ctx context.Context, desired *lab.Desired) error {
	rec, err := readLabRecord(c.opts.IdentityFile)
	if err != nil {
		return fmt.Errorf("read the lab record: %w", err)
	}
	if c.opts.Identity != "" && !slices.Contains(rec.Sources, c.opts.Identity) {
		rec.Sources = append(rec.Sources, c.opts.Identity)
	}
	candidates := map[string]bool{}
	for _, name := range append([]string{rec.Name, c.opts.AdoptLab}, rec.Adopting...) {
		if name != "" && name != desired.Lab {
			candidates[name] = true
		}
	}
	// No record of this repository: the repository may have moved. The
	// labs other daemons recorded in the same folder are looked at too.
	var siblings map[string]string
	if rec.Name == "" {
		if siblings, err = siblingRecords(c.opts.IdentityFile); err != nil {
			return err
		}
		for name := range siblings {
			if name != desired.Lab {
				candidates[name] = true
			}
		}
	}
	old := map[string]int{}
	if c.opts.Identity != "" {
		labs, err := c.opts.Docker.LabsOf(ctx, c.opts.Identity)
		if err != nil {
			return err
		}
		for name, n := range labs {
			if name != desired.Lab {
				old[name] = n
				delete(candidates, name)
			}
		}
	}
	for name := range candidates {
		o, err := c.opts.Docker.Observe(ctx, name)
		if err != nil {
			return err
		}
		if n := len(o.Containers); n > 0 {
			old[name] = n
		}
	}
	names := make([]string, 0, len(old))
	for name := range old {
		names = append(names, name)
	}
	sort.Strings(names)
	// Asked for now, or asked for before and not done yet.
	c.adoptFrom = ""
	if old[c.opts.AdoptLab] > 0 {
		c.adoptFrom = c.opts.AdoptLab
	} else {
		for _, name := range names {
			if slices.Contains(rec.Adopting, name) {
				c.adoptFrom = name
				break
			}
		}
	}
	if c.adoptFrom != "" {
		c.log.Warn("taking over the containers of the lab's old name", "old", c.adoptFrom, "lab", desired.Lab, "containers", old[c.adoptFrom])
	}
	for _, name := range names {
		if name == c.adoptFrom {
			continue
		}
		if c.adoptFrom != "" {
			return &IdentityError{Msg: fmt.Sprintf("the containers of %s are being taken over by %s; %d container(s) of %s, another old name of this lab, wait until that is done, or remove them (docker rm -f $(docker ps -aq --filter label=%s=%s))",
				c.adoptFrom, desired.Lab, old[name], name, runtime.LabelLab, name)}
		}
		if src, ok := siblings[name]; ok {
			return &IdentityError{Msg: fmt.Sprintf("this data folder holds no record of lab %s's repository, but one of lab %s, from %s, whose %d container(s) still run on this engine. If %s is this lab, whose repository moved and name changed, start labsync once with --adopt-lab %s to replace its containers with this lab's; if it is another lab, give this daemon a --data-dir of its own",
				desired.Lab, name, src, old[name], name, name)}
		}
		return &IdentityError{Msg: fmt.Sprintf("the lab was renamed from %s to %s (name: in lab.yaml, or the repository's URL), and %d container(s) of %s still run on this engine: under the new name labsync would not see them, nor the devices they drive. Start labsync once with --adopt-lab %s to replace them with this lab's containers (the takeover goes on across restarts until none is left), or remove them (docker rm -f $(docker ps -aq --filter label=%s=%s))",
			name, desired.Lab, old[name], name, name, runtime.LabelLab, name)}
	}
	rec.Name, rec.Adopting = desired.Lab, nil
	if c.adoptFrom != "" {
		rec.Adopting = []string{c.adoptFrom}
	}
	c.record = rec
	if err := c.saveRecord(); err != nil {
		return err
	}
	c.identityChecked = desired.Lab
	return nil
}

func (c *Controller) saveRecord() error {
	if c.opts.IdentityFile == "" {
		return nil
	}
	if err := writeLabRecord(c.opts.IdentityFile, c.record); err != nil {
		return fmt.Errorf("record the lab: %w", err)
	}
	return nil
}

// withAdopted adds to obs the containers of the lab's old name being
// taken over, until none is left; then the record forgets that name.
func (c *Controller) withAdopted(ctx context.Context, obs *runtime.Observed) error {
	if c.adoptFrom == "" {
		return nil
	}
	old, err := c.opts.Docker.Observe(ctx, c.adoptFrom)
	if err != nil {
		return err
	}
	if len(old.Containers) == 0 {
		c.log.Info("the containers of the lab's old name are all taken over", "old", c.adoptFrom)
		c.adoptFrom, c.record.Adopting = "", nil
		return c.saveRecord()
	}
	obs.Containers = append(obs.Containers, old.Containers...)
	return nil
}

// IdentityFile is where a daemon with data folder dataDir records the lab
// of repository source: a file per repository, so that daemons of
// several labs may share a data folder.
func IdentityFile(dataDir, source string) string {
	sum := sha256.Sum256([]byte(source))
	return filepath.Join(dataDir, "identity", hex.EncodeToString(sum[:8])+".json")
}

// NormalSource is the LabelSource of a repository URL: without
// credentials, a trailing slash or ".git".
func NormalSource(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		rest := url[i+3:]
		authority := rest
		if end := strings.IndexAny(rest, "/?#"); end >= 0 {
			authority = rest[:end]
		}
		if at := strings.LastIndex(authority, "@"); at >= 0 {
			url = url[:i+3] + rest[at+1:]
		}
	}
	url = strings.TrimRight(url, "/")
	return strings.TrimSuffix(url, ".git")
}
