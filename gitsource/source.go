// Package gitsource is labsync's side of git: it keeps a bare cache of the
// lab repository's tracked branch (and of pull-request refs on demand),
// checks the remote head cheaply before fetching, and serves a commit's
// tree as an fs.FS, so one pass sees one consistent revision without a
// work tree.
package gitsource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"

	"github.com/labsync/labsync/internal/redact"
)

// Auth holds the credentials for a remote. Secrets are read by the caller
// (from a file or the environment) and never logged.
type Auth struct {
	// Username and Password (or a token) for HTTPS. A token alone works
	// with most forges; the username then defaults to "x-access-token".
	Username string
	Password string
	// SSHKeyFile is a private key for SSH remotes; KnownHostsFile checks
	// the server's host key (required for SSH).
	SSHKeyFile       string
	SSHKeyPassphrase string
	KnownHostsFile   string
}

// Options configure a Source.
type Options struct {
	// URL is the remote: https://, http://, ssh://, user@host:path,
	// file:// or a local path. Credentials in it (https://user:token@host)
	// are moved into Auth, where Auth's own fields win; the URL is kept
	// and shown without them.
	URL string
	// Branch is the tracked branch (default main).
	Branch string
	// CacheDir holds the bare cache; one folder per URL is made inside.
	CacheDir string
	Auth     Auth
}

// Source is a lab repository's remote and its local cache. It is safe for
// concurrent use; fetches are serialised.
type Source struct {
	opts Options
	auth transport.AuthMethod
	repo *git.Repository

	// mu guards the cache: fetches write it, everything else reads it
	// (trees read from it long after Tree returns).
	mu sync.RWMutex
}

const remoteName = "origin"

// Open prepares the cache for opts.URL, creating it when missing. It does
// not contact the remote.
func Open(opts Options) (*Source, error) {
	if opts.URL == "" {
		return nil, errors.New("git source: no repository URL")
	}
	if opts.Branch == "" {
		opts.Branch = "main"
	}
	if opts.CacheDir == "" {
		return nil, errors.New("git source: no cache folder")
	}
	raw := opts.URL
	clean, user, password, err := splitCredentials(raw)
	if err != nil {
		return nil, err
	}
	opts.URL = clean
	if opts.Auth.Username == "" {
		opts.Auth.Username = user
	}
	if opts.Auth.Password == "" {
		opts.Auth.Password = password
	}
	auth, err := authMethod(opts)
	if err != nil {
		return nil, err
	}
	dir := cacheDir(opts.CacheDir, clean)
	if raw != clean {
		// Earlier versions named the cache after the URL with its
		// credentials and wrote them into its config.
		if err := os.RemoveAll(cacheDir(opts.CacheDir, raw)); err != nil {
			return nil, fmt.Errorf("git cache: remove a cache made with credentials in its URL: %w", err)
		}
	}
	repo, err := git.PlainOpen(dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("git cache: %w", err)
		}
		repo, err = git.PlainInit(dir, true)
	}
	if err != nil {
		return nil, fmt.Errorf("git cache %s: %w", dir, err)
	}
	if _, err := repo.Remote(remoteName); errors.Is(err, git.ErrRemoteNotFound) {
		if _, err := repo.CreateRemote(&config.RemoteConfig{Name: remoteName, URLs: []string{opts.URL}}); err != nil {
			return nil, fmt.Errorf("git cache: %w", err)
		}
	}
	return &Source{opts: opts, auth: auth, repo: repo}, nil
}

// OpenCache opens the cache that Open made for remote (a URL without
// credentials, as URL returns it) in cacheDir, to read trees of what was
// fetched: no credentials, nothing created, fetched or removed.
func OpenCache(remote, base string) (*Source, error) {
	dir := cacheDir(base, remote)
	repo, err := git.PlainOpen(dir)
	if err != nil {
		return nil, fmt.Errorf("git cache %s: %w", dir, err)
	}
	return &Source{opts: Options{URL: remote, CacheDir: base}, repo: repo}, nil
}

// cacheDir is the cache folder of remote inside base.
func cacheDir(base, remote string) string {
	sum := sha256.Sum256([]byte(remote))
	return filepath.Join(base, hex.EncodeToString(sum[:8])+".git")
}

// splitCredentials removes the credentials from a scheme://user:pass@host
// URL and returns them. For http(s) the whole user part goes (a token
// alone is common there); for other schemes only the password does, and
// the user (ssh's login) stays. Anything else is returned unchanged.
// Errors never show the URL's credentials.
func splitCredentials(raw string) (clean, user, password string, err error) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw, "", "", nil
	}
	scheme, rest := strings.ToLower(raw[:i]), raw[i+3:]
	authority := rest
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		authority = rest[:end]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return raw, "", "", nil
	}
	userinfo, hostAndPath := authority[:at], rest[at+1:]
	u, p, hasPassword := strings.Cut(userinfo, ":")
	if user, err = url.PathUnescape(u); err == nil {
		password, err = url.PathUnescape(p)
	}
	if err != nil {
		return "", "", "", fmt.Errorf("git source: repository URL %s: the user part is not valid URL escaping", Redact(raw))
	}
	switch {
	case scheme == "http" || scheme == "https":
		return raw[:i+3] + hostAndPath, user, password, nil
	case hasPassword:
		return raw[:i+3] + u + "@" + hostAndPath, "", password, nil
	}
	return raw, "", "", nil
}

func authMethod(o Options) (transport.AuthMethod, error) {
	a := o.Auth
	ep, err := transport.NewEndpoint(o.URL)
	if err != nil {
		// A parse error quotes the URL: name it redacted instead.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("git source: repository URL %s: %s", Redact(o.URL), redact.String(err.Error()))
	}
	switch ep.Protocol {
	case "ssh":
		if a.SSHKeyFile == "" {
			return nil, errors.New("git source: an ssh remote needs a private key file")
		}
		user := ep.User
		if user == "" {
			user = "git"
		}
		keys, err := gitssh.NewPublicKeysFromFile(user, a.SSHKeyFile, a.SSHKeyPassphrase)
		if err != nil {
			return nil, fmt.Errorf("git source: ssh key: %w", err)
		}
		if a.KnownHostsFile == "" {
			return nil, errors.New("git source: an ssh remote needs a known_hosts file to check the server's key")
		}
		cb, err := gitssh.NewKnownHostsCallback(a.KnownHostsFile)
		if err != nil {
			return nil, fmt.Errorf("git source: known_hosts: %w", err)
		}
		keys.HostKeyCallback = cb
		return keys, nil
	case "http", "https":
		if a.Password == "" && a.Username == "" {
			return nil, nil
		}
		user := a.Username
		if user == "" {
			user = "x-access-token"
		}
		return &githttp.BasicAuth{Username: user, Password: a.Password}, nil
	}
	return nil, nil
}

// Branch returns the tracked branch.
func (s *Source) Branch() string { return s.opts.Branch }

// URL returns the remote's URL without credentials: the URL the cache
// uses, and the one to show.
func (s *Source) URL() string { return s.opts.URL }

// Redact removes a password or token from a URL for display.
func Redact(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		authority := rest
		if end := strings.IndexAny(rest, "/?#"); end >= 0 {
			authority = rest[:end]
		}
		// The last @ of the authority: a password may hold an unescaped @.
		if at := strings.LastIndex(authority, "@"); at >= 0 {
			return u[:i+3] + "***@" + rest[at+1:]
		}
	}
	return u
}

func (s *Source) remote() (*git.Remote, error) {
	return s.repo.Remote(remoteName)
}

// RemoteHead asks the remote for the tracked branch's commit without
// fetching anything: one ref listing.
func (s *Source) RemoteHead(ctx context.Context) (string, error) {
	return s.remoteRef(ctx, plumbing.NewBranchReferenceName(s.opts.Branch))
}

func (s *Source) remoteRef(ctx context.Context, name plumbing.ReferenceName) (string, error) {
	r, err := s.remote()
	if err != nil {
		return "", err
	}
	refs, err := r.ListContext(ctx, &git.ListOptions{Auth: s.auth})
	if err != nil {
		return "", fmt.Errorf("list %s: %w", s.URL(), err)
	}
	for _, ref := range refs {
		if ref.Name() == name {
			return ref.Hash().String(), nil
		}
	}
	return "", fmt.Errorf("%s has no %s", s.URL(), name)
}

// LocalHead returns the tracked branch's commit in the cache, or "" when
// it was never fetched.
func (s *Source) LocalHead() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ref, err := s.repo.Reference(trackingRef(s.opts.Branch), true)
	if err != nil {
		return ""
	}
	return ref.Hash().String()
}

func trackingRef(branch string) plumbing.ReferenceName {
	return plumbing.NewRemoteReferenceName(remoteName, branch)
}

// Fetch brings the tracked branch into the cache and returns its commit.
func (s *Source) Fetch(ctx context.Context) (string, error) {
	branch := plumbing.NewBranchReferenceName(s.opts.Branch)
	if err := s.fetch(ctx, config.RefSpec(fmt.Sprintf("+%s:%s", branch, trackingRef(s.opts.Branch)))); err != nil {
		return "", err
	}
	return s.LocalHead(), nil
}

// FetchRef brings one remote ref (e.g. refs/pull/7/head) into the cache
// under refs/labsync/ and returns its commit.
func (s *Source) FetchRef(ctx context.Context, ref string) (string, error) {
	if !strings.HasPrefix(ref, "refs/") || strings.ContainsAny(ref, " :~^?*[\\") {
		return "", fmt.Errorf("fetch %q: not a full ref name", ref)
	}
	local := plumbing.ReferenceName("refs/labsync/" + strings.TrimPrefix(ref, "refs/"))
	if err := s.fetch(ctx, config.RefSpec(fmt.Sprintf("+%s:%s", ref, local))); err != nil {
		return "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, err := s.repo.Reference(local, true)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", ref, err)
	}
	return r.Hash().String(), nil
}

func (s *Source) fetch(ctx context.Context, spec config.RefSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.remote()
	if err != nil {
		return err
	}
	err = r.FetchContext(ctx, &git.FetchOptions{RefSpecs: []config.RefSpec{spec}, Auth: s.auth, Tags: git.NoTags, Force: true})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("fetch %s from %s: %w", spec, s.URL(), err)
	}
	return nil
}

// Resolve turns a revision (a commit hash, a branch, a tag or a ref of the
// cache) into a commit hash.
func (s *Source) Resolve(rev string) (string, error) {
	if rev == "" || rev == "HEAD" {
		if h := s.LocalHead(); h != "" {
			return h, nil
		}
		return "", errors.New("the tracked branch was not fetched yet")
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, cand := range []string{rev, "refs/remotes/" + remoteName + "/" + rev} {
		if h, err := s.repo.ResolveRevision(plumbing.Revision(cand)); err == nil {
			if _, err := s.repo.CommitObject(*h); err == nil {
				return h.String(), nil
			}
		}
	}
	return "", fmt.Errorf("revision %q not found in the cache of %s", rev, s.URL())
}

// Tree returns the tree of a commit as a read-only file system.
func (s *Source) Tree(commit string) (fs.FS, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, err := s.repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", commit, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", commit, err)
	}
	return &treeFS{repo: s.repo, root: t, mu: &s.mu}, nil
}

// Changed lists the paths that differ between two commits.
func (s *Source) Changed(from, to string) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	trees := make([]*object.Tree, 2)
	for i, h := range []string{from, to} {
		c, err := s.repo.CommitObject(plumbing.NewHash(h))
		if err != nil {
			return nil, fmt.Errorf("commit %s: %w", h, err)
		}
		if trees[i], err = c.Tree(); err != nil {
			return nil, err
		}
	}
	changes, err := object.DiffTree(trees[0], trees[1])
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, ch := range changes {
		for _, p := range []string{ch.From.Name, ch.To.Name} {
			if p != "" && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// Commit describes a commit for status output.
type Commit struct {
	Hash    string
	Subject string
	Author  string
}

// Describe returns a commit's subject and author.
func (s *Source) Describe(hash string) (Commit, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, err := s.repo.CommitObject(plumbing.NewHash(hash))
	if err != nil {
		return Commit{}, err
	}
	subject, _, _ := strings.Cut(c.Message, "\n")
	return Commit{Hash: hash, Subject: subject, Author: c.Author.Name}, nil
}

// LastCommitTouching returns the newest commit reachable from from that
// changed any of paths, or "" when none did.
func (s *Source) LastCommitTouching(from string, paths []string) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	want := map[string]bool{}
	for _, p := range paths {
		want[p] = true
	}
	iter, err := s.repo.Log(&git.LogOptions{From: plumbing.NewHash(from), PathFilter: func(p string) bool { return want[p] }})
	if err != nil {
		return "", fmt.Errorf("history of %v: %w", paths, err)
	}
	defer iter.Close()
	c, err := iter.Next()
	if err != nil {
		return "", nil // no commit touched them
	}
	return c.Hash.String(), nil
}
