package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labsync/labsync/internal/testenv"
)

// Credentials in --repo authenticate, yet show nowhere: not in the output,
// not in the git cache, not in the lab name taken from the URL. A password
// file wins over the URL's password.
func TestRepoURLCredentialsStayInMemory(t *testing.T) {
	gs := testenv.NewGitServer(t, "lab", "tok3n-pw")
	repo := gs.NewRepo(t, "mylab")
	repo.Commit("one agent", map[string]string{"sut/dut1.conf": "agent_id: dut1\nserver_address: http://tf:8000\njob_queues: [dut1]\n"})
	secret := filepath.Join(t.TempDir(), "token")
	testenv.WriteFiles(t, filepath.Dir(secret), map[string]string{"token": "tok3n-pw\n"})
	withCreds := strings.Replace(repo.URL, "://", "://lab:tok3n-pw@", 1)
	stale := strings.Replace(repo.URL, "://", "://lab:0ld-pw@", 1)
	for _, args := range [][]string{
		{"--repo", withCreds},
		{"--repo", stale, "--git-password-file", secret},
	} {
		cache := t.TempDir()
		out, errOut, err := runCmd(t, append([]string{"validate", "--cache-dir", cache}, args...)...)
		if err != nil || !strings.Contains(out, `lab "mylab" is valid`) {
			t.Fatalf("validate %v: %v\n%s%s", args, err, out, errOut)
		}
		for _, pw := range []string{"tok3n-pw", "0ld-pw"} {
			if strings.Contains(out+errOut, pw) {
				t.Errorf("validate %v printed the password:\n%s%s", args, out, errOut)
			}
			_ = filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if data, _ := os.ReadFile(p); strings.Contains(string(data), pw) {
						t.Errorf("the git cache holds the password in %s", p)
					}
				}
				return nil
			})
		}
	}
	if got := repoName("https://user:s3cret@git.example"); strings.Contains(got, "s3cret") {
		t.Errorf("repoName = %q", got)
	}
}
