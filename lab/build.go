package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// MaxContextSize bounds the total size of one image build context.
const MaxContextSize = 256 << 20

// BuildContext is an image build context inside the repository, with the
// files that go into it and a digest of their content. The image is tagged
// with the digest, so an unchanged context is never rebuilt.
type BuildContext struct {
	// Name is "agent" or the stack service the image is for.
	Name       string
	Dir        string
	Dockerfile string
	Args       map[string]string
	// Files are the context's files, relative to Dir, sorted; .dockerignore
	// is applied.
	Files []ContextFile
	// Digest is a SHA-256 of the files' names, modes and content, the
	// Dockerfile name and the build arguments.
	Digest string
}

// ContextFile is one file of a build context.
type ContextFile struct {
	Path string
	Mode fs.FileMode
	Size int64
}

// Tag returns the image tag for a build of this context in the given lab:
// labsync/<lab>/<context folder>:<digest>. Services that share a context
// share the image.
func (b *BuildContext) Tag(lab string) string {
	dir := sanitizeRef(b.Dir)
	if dir == "" {
		dir = "root"
	}
	return fmt.Sprintf("labsync/%s/%s:%s", sanitizeRef(lab), dir, b.Digest[:12])
}

func sanitizeRef(s string) string {
	var out strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			out.WriteRune(r)
		} else {
			out.WriteRune('-')
		}
	}
	return strings.Trim(out.String(), "-._")
}

// loadBuild reads a build context's file list and computes its digest.
// where and line locate the declaration for error messages.
func (l *Lab) loadBuild(where string, line int, name, dir, dockerfile string, args map[string]string) *BuildContext {
	if where == "" {
		where = dir
	}
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !safePath(dockerfile) {
		l.d.errorf(where, line, "dockerfile %q must be a relative path inside the build context", dockerfile)
		return nil
	}
	if e, err := l.entry(dir); err == nil && e.Type()&fs.ModeSymlink != 0 {
		l.d.errorf(where, line, "build context %s is a symbolic link; labsync does not follow links, commit the folder itself", dir)
		return nil
	}
	b := &BuildContext{Name: name, Dir: dir, Dockerfile: path.Clean(dockerfile), Args: args}
	if !l.exists(path.Join(dir, b.Dockerfile)) {
		l.d.errorf(where, line, "build context %s has no %s; add it or point dockerfile: at the right file", dir, b.Dockerfile)
		return nil
	}
	// Services that share a context share its listing and digest: the
	// context is read once.
	key := buildKey(b)
	if done, ok := l.builds[key]; ok {
		if done == nil {
			return nil // its error is already reported
		}
		shared := *done
		shared.Name = name
		return &shared
	}
	l.builds[key] = nil
	files, err := l.contextFiles(dir, b.Dockerfile)
	if err != nil {
		l.reportContextError(where, line, "build context "+dir, err)
		return nil
	}
	b.Files = files
	digest, err := l.contextDigest(b)
	if err != nil {
		l.reportContextError(where, line, "build context "+dir, err)
		return nil
	}
	b.Digest = digest
	l.builds[key] = b
	return b
}

func buildKey(b *BuildContext) string {
	keys := make([]string, 0, len(b.Args))
	for k := range b.Args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\x00%s", b.Dir, b.Dockerfile)
	for _, k := range keys {
		fmt.Fprintf(&sb, "\x00%s=%s", k, b.Args[k])
	}
	return sb.String()
}

// errReported stops a walk of the repository for a problem already
// reported: the read budget is spent, or a file of the walk is refused.
var errReported = errors.New("reported")

// MaxIgnorePatterns and MaxIgnoreBytes bound a .dockerignore: every file
// of its context is matched against each pattern.
const (
	MaxIgnorePatterns = 200
	MaxIgnoreBytes    = 8 << 10
)

// reportContextError reports a failed walk or digest of a folder, unless
// the budget or the context stopped it (reported elsewhere).
func (l *Lab) reportContextError(where string, line int, what string, err error) {
	if errors.Is(err, errReported) || l.ctx.Err() != nil {
		return
	}
	l.d.errorf(where, line, "%s: %v", what, err)
}

// listing is the cached result of contextFiles.
type listing struct {
	files []ContextFile
	err   error
}

// contextFiles lists a folder's files as contextFilesOf does, once per
// folder and Dockerfile, charging them to the read budget.
func (l *Lab) contextFiles(dir, dockerfile string) ([]ContextFile, error) {
	key := dir + "\x00" + dockerfile
	if c, ok := l.listings[key]; ok {
		return c.files, c.err
	}
	ignoreFile := path.Join(dir, ".dockerignore")
	ignore, ok := l.readOptional(ignoreFile) // bounded like every lab file
	if !ok && l.hasDiag(ignoreFile) {
		l.listings[key] = listing{nil, errReported}
		return nil, errReported
	}
	files, err := contextFilesOf(l.ctx, l.fsys, dir, dockerfile, ignore, func(rel string) bool { return l.spend(path.Join(dir, rel), 1, 0) })
	if errors.Is(err, errTooManyPatterns) {
		l.d.errorf(ignoreFile, 0, "has more than %d patterns or %d bytes of them; every file of the context is matched against each, so keep it short", MaxIgnorePatterns, MaxIgnoreBytes)
		err = errReported
	}
	l.listings[key] = listing{files, err}
	return files, err
}

var errTooManyPatterns = errors.New("too many .dockerignore patterns")

// contextFilesOf lists the files of a build context, honouring the
// patterns of its .dockerignore (ignore; nil when there is none) the way
// docker build does. The Dockerfile and .dockerignore are always sent, as
// docker build needs them. charge is called for each file listed; the
// walk stops when it returns false or ctx ends.
func contextFilesOf(ctx context.Context, fsys fs.FS, dir, dockerfile string, ignore []byte, charge func(rel string) bool) ([]ContextFile, error) {
	patterns, err := ignorefile.ReadAll(bytes.NewReader(ignore))
	if err != nil {
		return nil, fmt.Errorf("read .dockerignore: %w", err)
	}
	patternBytes := 0
	for _, p := range patterns {
		patternBytes += len(p)
	}
	if len(patterns) > MaxIgnorePatterns || patternBytes > MaxIgnoreBytes {
		return nil, errTooManyPatterns
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	var out []ContextFile
	var total int64
	err = fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir {
			if d.Type()&fs.ModeSymlink != 0 {
				return fmt.Errorf("%s is a symbolic link; labsync does not follow links", dir)
			}
			return nil
		}
		rel := p
		if dir != "." {
			rel = strings.TrimPrefix(p, dir+"/")
		}
		always := rel == dockerfile || rel == ".dockerignore"
		if !always {
			skip, err := pm.MatchesOrParentMatches(rel)
			if err != nil {
				return err
			}
			if skip {
				if d.IsDir() && !pm.Exclusions() {
					return fs.SkipDir
				}
				return nil
			}
		}
		if d.IsDir() {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link; build contexts may hold regular files only", rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		if total > MaxContextSize {
			return fmt.Errorf("larger than %d MiB; exclude what the image does not need in .dockerignore", MaxContextSize>>20)
		}
		if !charge(rel) {
			return errReported
		}
		out = append(out, ContextFile{Path: rel, Mode: info.Mode(), Size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// contextDigest hashes a build context's files, charging their bytes to
// the read budget.
func (l *Lab) contextDigest(b *BuildContext) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "dockerfile\x00%s\x00", b.Dockerfile)
	keys := make([]string, 0, len(b.Args))
	for k := range b.Args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "arg\x00%s=%s\x00", k, b.Args[k])
	}
	for _, f := range b.Files {
		if err := l.ctx.Err(); err != nil {
			return "", err
		}
		if !l.spend(path.Join(b.Dir, f.Path), 0, f.Size) {
			return "", errReported
		}
		exec := f.Mode.Perm()&0o111 != 0
		fmt.Fprintf(h, "file\x00%s\x00%t\x00%d\x00", f.Path, exec, f.Size)
		r, err := l.fsys.Open(path.Join(b.Dir, f.Path))
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
