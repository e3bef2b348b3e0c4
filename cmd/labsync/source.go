package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/labsync/labsync/gitsource"
)

// gitFlags select a lab repository by git URL instead of a folder.
type gitFlags struct {
	repo, rev, branch, cacheDir string
	username, passwordFile      string
	sshKey, knownHosts          string
}

func (g *gitFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.repo, "repo", os.Getenv("LABSYNC_REPO"), "lab repository URL (https://, ssh://, user@host:path, file:// or a path); replaces PATH. Credentials in it (https://user:token@host/...) are used from memory only, never written or shown; --git-username and --git-password-file win over them (env: LABSYNC_REPO)")
	fs.StringVar(&g.rev, "rev", "", "with --repo: revision to use, a commit, branch, tag or full ref such as refs/pull/7/head (default: the tracked branch's head)")
	fs.StringVar(&g.branch, "branch", envOr("LABSYNC_BRANCH", "main"), "with --repo: tracked branch (env: LABSYNC_BRANCH)")
	fs.StringVar(&g.cacheDir, "cache-dir", os.Getenv("LABSYNC_CACHE_DIR"), "with --repo: folder of the git cache (default: the user cache folder; env: LABSYNC_CACHE_DIR)")
	fs.StringVar(&g.username, "git-username", os.Getenv("LABSYNC_GIT_USERNAME"), "HTTPS user name (env: LABSYNC_GIT_USERNAME; default x-access-token with a token)")
	fs.StringVar(&g.passwordFile, "git-password-file", os.Getenv("LABSYNC_GIT_PASSWORD_FILE"), "file holding the HTTPS password or token (env: LABSYNC_GIT_PASSWORD_FILE, or the value itself in LABSYNC_GIT_PASSWORD)")
	fs.StringVar(&g.sshKey, "ssh-key", os.Getenv("LABSYNC_SSH_KEY"), "private key file for ssh remotes (env: LABSYNC_SSH_KEY)")
	fs.StringVar(&g.knownHosts, "known-hosts", os.Getenv("LABSYNC_KNOWN_HOSTS"), "known_hosts file for ssh remotes (env: LABSYNC_KNOWN_HOSTS)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// readSecret returns the content of file (trailing newline trimmed), or the
// value of env when no file is given.
func readSecret(file, env string) (string, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read secret: %w", err)
		}
		return strings.TrimRight(string(data), "\r\n"), nil
	}
	return os.Getenv(env), nil
}

func (g *gitFlags) open() (*gitsource.Source, error) {
	cache := g.cacheDir
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("no --cache-dir and no user cache folder: %w", err)
		}
		cache = filepath.Join(base, "labsync", "git")
	}
	password, err := readSecret(g.passwordFile, "LABSYNC_GIT_PASSWORD")
	if err != nil {
		return nil, err
	}
	return gitsource.Open(gitsource.Options{
		URL: g.repo, Branch: g.branch, CacheDir: cache,
		Auth: gitsource.Auth{Username: g.username, Password: password, SSHKeyFile: g.sshKey, KnownHostsFile: g.knownHosts},
	})
}

// checkout fetches the wanted revision and returns its tree, its commit
// and a default lab name taken from the URL.
func (g *gitFlags) checkout(ctx context.Context) (fs.FS, string, string, error) {
	src, err := g.open()
	if err != nil {
		return nil, "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var commit string
	switch {
	case strings.HasPrefix(g.rev, "refs/"):
		commit, err = src.FetchRef(ctx, g.rev)
	default:
		commit, err = src.Fetch(ctx)
		if err == nil && g.rev != "" {
			commit, err = src.Resolve(g.rev)
			// Tags and other branches are fetched on demand.
			for _, ref := range []string{"refs/tags/" + g.rev, "refs/heads/" + g.rev} {
				if err == nil {
					break
				}
				if c, ferr := src.FetchRef(ctx, ref); ferr == nil {
					commit, err = c, nil
				}
			}
		}
	}
	if err != nil {
		return nil, "", "", err
	}
	tree, err := src.Tree(commit)
	if err != nil {
		return nil, "", "", err
	}
	return tree, commit, repoName(src.URL()), nil
}

// repoName is the default lab name of a repository URL: its last path
// element without .git. Credentials in the URL never make it in.
func repoName(url string) string {
	base := path.Base(strings.TrimRight(strings.ReplaceAll(gitsource.Redact(url), ":", "/"), "/"))
	return strings.TrimSuffix(strings.TrimPrefix(base, "***@"), ".git")
}

var errPathAndRepo = errors.New("give either PATH or --repo, not both")
