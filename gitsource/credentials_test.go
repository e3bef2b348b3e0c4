package gitsource_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
)

// withCredentials puts user:password@ into an http:// URL.
func withCredentials(url, userinfo string) string {
	return strings.Replace(url, "://", "://"+userinfo+"@", 1)
}

// cacheHolds reports the files of the cache (names or content) that hold s.
func cacheHolds(t *testing.T, dir, s string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(p, s) {
			hits = append(hits, p)
		}
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if strings.Contains(string(data), s) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// Credentials in the repository URL authenticate, and are kept in memory
// only: not in the cache's git config, not in its folder name, not in what
// URL returns.
func TestURLCredentialsNeverReachDisk(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab-user", "s3cret-pw")
	repo := gs.NewRepo(t, "lab")
	want := repo.Commit("init", map[string]string{"sut/a.conf": "agent_id: a\n"})
	cache := t.TempDir()
	src, err := gitsource.Open(gitsource.Options{URL: withCredentials(repo.URL, "lab-user:s3cret-pw"), CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.Fetch(context.Background())
	if err != nil || got != want {
		t.Fatalf("fetch = %s, %v; want %s", got, err, want)
	}
	if hits := cacheHolds(t, cache, "s3cret-pw"); len(hits) > 0 {
		t.Errorf("the cache holds the password: %v", hits)
	}
	if hits := cacheHolds(t, cache, "lab-user"); len(hits) > 0 {
		t.Errorf("the cache holds the user name: %v", hits)
	}
	if src.URL() != repo.URL {
		t.Errorf("URL() = %s, want %s", src.URL(), repo.URL)
	}
	// The same repository given without credentials uses the same cache.
	again, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: cache, Auth: gitsource.Auth{Username: "lab-user", Password: "s3cret-pw"}})
	if err != nil {
		t.Fatal(err)
	}
	if again.LocalHead() != want {
		t.Error("the URL without credentials has a cache of its own")
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 1 {
		t.Errorf("%d cache folders, want 1", len(ents))
	}
}

// A cache made by an earlier labsync, named after the URL with its
// credentials and holding them in its config, is removed.
func TestCacheNamedAfterCredentialsIsRemoved(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab-user", "s3cret-pw")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("init", map[string]string{"README": "x"})
	url := withCredentials(repo.URL, "lab-user:s3cret-pw")
	cache := t.TempDir()
	sum := sha256.Sum256([]byte(url))
	old := filepath.Join(cache, hex.EncodeToString(sum[:8])+".git")
	testenv.Git(t, cache, "init", "-q", "--bare", old)
	testenv.Git(t, old, "remote", "add", "origin", url)
	if _, err := gitsource.Open(gitsource.Options{URL: url, CacheDir: cache}); err != nil {
		t.Fatal(err)
	}
	if hits := cacheHolds(t, cache, "s3cret-pw"); len(hits) > 0 {
		t.Errorf("the old cache is still there: %v", hits)
	}
}

// Explicit credentials win over those in the URL.
func TestExplicitCredentialsWin(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab-user", "s3cret-pw")
	repo := gs.NewRepo(t, "lab")
	want := repo.Commit("init", map[string]string{"README": "x"})
	src, err := gitsource.Open(gitsource.Options{URL: withCredentials(repo.URL, "old-user:old-pw"), CacheDir: t.TempDir(),
		Auth: gitsource.Auth{Username: "lab-user", Password: "s3cret-pw"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := src.Fetch(context.Background()); err != nil || got != want {
		t.Fatalf("fetch = %s, %v; want %s", got, err, want)
	}
}

// Errors name the repository without its credentials, including those go-git
// and net/url make from the URL.
func TestErrorsHideURLCredentials(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab-user", "s3cret-pw")
	repo := gs.NewRepo(t, "lab")
	repo.Commit("init", map[string]string{"README": "x"})
	ctx := context.Background()
	for _, tc := range []struct{ name, url string }{
		{"wrong password", withCredentials(repo.URL, "lab-user:wr0ng-pw")},
		{"token as user", withCredentials(repo.URL, "tok3n-value")},
		{"nothing listening", "http://lab-user:wr0ng-pw@127.0.0.1:1/lab.git"},
		{"bad port", "http://lab-user:wr0ng-pw@127.0.0.1:port/lab.git"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := t.TempDir()
			src, err := gitsource.Open(gitsource.Options{URL: tc.url, CacheDir: cache})
			if err == nil {
				_, err = src.RemoteHead(ctx)
				if _, ferr := src.Fetch(ctx); ferr != nil {
					err = ferr
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, secret := range []string{"wr0ng-pw", "tok3n-value"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows the credentials: %v", err)
				}
				if hits := cacheHolds(t, cache, secret); len(hits) > 0 {
					t.Errorf("the cache holds them: %v", hits)
				}
			}
		})
	}
}

func TestSplitCredentials(t *testing.T) {
	for _, tc := range []struct{ in, clean, user, password string }{
		{"https://u:p%40ss@github.com/o/r.git", "https://github.com/o/r.git", "u", "p@ss"},
		{"https://u:p@ss@github.com/o/r.git", "https://github.com/o/r.git", "u", "p@ss"},
		{"https://ghp_token@github.com/o/r.git", "https://github.com/o/r.git", "ghp_token", ""},
		{"HTTP://u:p@host:8080/r.git?x=a@b", "HTTP://host:8080/r.git?x=a@b", "u", "p"},
		{"https://github.com/o/r.git", "https://github.com/o/r.git", "", ""},
		// ssh's user is its login: only a password goes.
		{"ssh://git:pw@host/r.git", "ssh://git@host/r.git", "", "pw"},
		{"ssh://git@host/r.git", "ssh://git@host/r.git", "", ""},
		{"git@github.com:o/r.git", "git@github.com:o/r.git", "", ""},
		{"/srv/git/lab.git", "/srv/git/lab.git", "", ""},
	} {
		clean, user, password, err := gitsource.SplitCredentials(tc.in)
		if err != nil || clean != tc.clean || user != tc.user || password != tc.password {
			t.Errorf("SplitCredentials(%s) = %s %q %q %v, want %s %q %q", tc.in, clean, user, password, err, tc.clean, tc.user, tc.password)
		}
	}
	if _, _, _, err := gitsource.SplitCredentials("https://u:p%zzsecret@host/r.git"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("bad escaping: %v", err)
	}
}
