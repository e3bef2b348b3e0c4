package gitsource_test

import (
	"context"
	"testing"

	"github.com/labsync/labsync/gitsource"
	"github.com/labsync/labsync/internal/testenv"
)

// BenchmarkPollNoChange measures what one poll costs when the remote head
// has not moved: a ref listing over smart HTTP, and no fetch.
func BenchmarkPollNoChange(b *testing.B) {
	gs := testenv.NewGitServer(b, "u", "p")
	repo := gs.NewRepo(b, "lab")
	files := map[string]string{}
	for i := 0; i < 200; i++ {
		files["sut/dut"+string(rune('a'+i%26))+string(rune('a'+i/26))+".conf"] = "agent_id: x\n"
	}
	repo.Commit("lab", files)
	src, err := gitsource.Open(gitsource.Options{URL: repo.URL, CacheDir: b.TempDir(), Auth: gitsource.Auth{Username: "u", Password: "p"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := src.Fetch(ctx); err != nil {
		b.Fatal(err)
	}
	req0, fetch0 := gs.Requests.Load(), gs.Fetches.Load()
	for b.Loop() {
		head, err := src.RemoteHead(ctx)
		if err != nil || head != src.LocalHead() {
			b.Fatalf("head %s, %v", head, err)
		}
	}
	b.ReportMetric(float64(gs.Requests.Load()-req0)/float64(b.N), "http-requests/op")
	b.ReportMetric(float64(gs.Fetches.Load()-fetch0)/float64(b.N), "fetches/op")
}
