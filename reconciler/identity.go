package reconciler

import (
	"context"
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

// checkIdentity makes sure that the lab of desired may be applied: no
// container of its name comes from another repository, and no container
// of this lab runs under another name, unless ControllerOptions.AdoptLab
// names it (then its containers are taken over). It runs once per lab
// name; obs is what the engine has of that name.
func (c *Controller) checkIdentity(ctx context.Context, desired *lab.Desired, obs *runtime.Observed) error {
	if c.identityChecked == desired.Lab {
		return nil
	}
	rec, err := readLabRecord(c.opts.IdentityFile)
	if err != nil {
		return fmt.Errorf("read the lab record: %w", err)
	}
	ours := []string{}
	if c.opts.Identity != "" {
		ours = append(ours, c.opts.Identity)
	}
	if rec.Name == desired.Lab {
		ours = append(ours, rec.Sources...)
	}
	adopt := c.opts.AdoptLab
	if c.opts.Identity != "" {
		for _, o := range obs.Containers {
			if o.Source == "" || slices.Contains(ours, o.Source) {
				continue
			}
			if adopt != desired.Lab {
				return &IdentityError{Msg: fmt.Sprintf("lab %s: container %s on this engine belongs to another lab of that name, from %s; two labs must not share a name on one engine: give this one another name (name: in lab.yaml). If it is this lab, whose repository moved from there, start labsync once with --adopt-lab %s",
					desired.Lab, o.Name, o.Source, desired.Lab)}
			}
			ours = append(ours, o.Source)
		}
	}
	// The lab's containers under another name: the recorded one, and
	// those stamped with this lab's repository.
	old := map[string]int{}
	if rec.Name != "" && rec.Name != desired.Lab {
		o, err := c.opts.Docker.Observe(ctx, rec.Name)
		if err != nil {
			return err
		}
		if n := len(o.Containers); n > 0 {
			old[rec.Name] = n
		}
	}
	if c.opts.Identity != "" {
		labs, err := c.opts.Docker.LabsOf(ctx, c.opts.Identity)
		if err != nil {
			return err
		}
		for name, n := range labs {
			if name != desired.Lab {
				old[name] = n
			}
		}
	}
	names := make([]string, 0, len(old))
	for name := range old {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == adopt {
			c.adoptFrom = name
			c.log.Warn("taking over the containers of the lab's old name", "old", name, "lab", desired.Lab, "containers", old[name])
			continue
		}
		return &IdentityError{Msg: fmt.Sprintf("the lab was renamed from %s to %s (name: in lab.yaml, or the repository's URL), and %d container(s) of %s still run on this engine: under the new name labsync would not see them, nor the devices they drive. Start labsync once with --adopt-lab %s to replace them with this lab's containers, or remove them (docker rm -f $(docker ps -aq --filter label=%s=%s))",
			name, desired.Lab, old[name], name, name, runtime.LabelLab, name)}
	}
	if c.opts.IdentityFile != "" {
		sources := rec.Sources
		if rec.Name != desired.Lab {
			sources = nil
		}
		for _, s := range ours {
			if !slices.Contains(sources, s) {
				sources = append(sources, s)
			}
		}
		if err := writeLabRecord(c.opts.IdentityFile, labRecord{Name: desired.Lab, Sources: sources}); err != nil {
			return fmt.Errorf("record the lab: %w", err)
		}
	}
	c.identityChecked = desired.Lab
	return nil
}

// withAdopted adds to obs the containers of the lab's old name being
// taken over, until none is left.
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
		c.adoptFrom = ""
		return nil
	}
	obs.Containers = append(obs.Containers, old.Containers...)
	return nil
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
