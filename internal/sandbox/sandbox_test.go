package sandbox

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary plays the child: SANDBOX_CHILD says what it does.
func TestMain(m *testing.M) {
	switch os.Getenv("SANDBOX_CHILD") {
	case "":
		os.Exit(m.Run())
	case "echo":
		fmt.Print("out")
		fmt.Fprint(os.Stderr, "err")
		os.Exit(3)
	case "alloc":
		for {
			b := make([]byte, 8<<20)
			for i := range b {
				b[i] = 1
			}
			held = append(held, b)
		}
	case "spin":
		x := 0
		for {
			x++
		}
	case "sleep":
		time.Sleep(time.Hour)
	case "flood":
		b := []byte(strings.Repeat("y", 1<<20))
		for {
			os.Stdout.Write(b)
		}
	case "crash":
		panic("the child crashes")
	}
	os.Exit(0)
}

// held keeps what the alloc child allocates alive.
var held [][]byte

func child(role string) Command {
	return Command{Path: os.Args[0], Env: []string{"SANDBOX_CHILD=" + role}}
}

func TestRunEndsAtEachLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes for seconds")
	}
	cases := []struct {
		role string
		lim  Limits
		want Limit
	}{
		{"alloc", Limits{Memory: 64 << 20, Wall: time.Minute}, LimitMemory},
		{"spin", Limits{CPU: time.Second, Wall: time.Minute}, LimitCPU},
		{"sleep", Limits{Wall: 200 * time.Millisecond}, LimitWall},
		{"flood", Limits{Output: 1 << 20, Wall: 10 * time.Second}, LimitOutput},
	}
	for _, tc := range cases {
		t.Run(tc.role, func(t *testing.T) {
			res, err := Run(context.Background(), child(tc.role), tc.lim)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s; peak RSS %d MiB, CPU %s, wall %s", tc.role, res.Describe(tc.lim), res.PeakRSS>>20, res.CPU, res.Wall.Round(time.Millisecond))
			if res.Limit != tc.want || res.OK() {
				t.Fatalf("limit %q, exit %d, signal %v; want %q", res.Limit, res.ExitCode, res.Signal, tc.want)
			}
			if tc.want == LimitMemory && res.PeakRSS > tc.lim.Memory+64<<20 {
				t.Errorf("peak RSS %d MiB, far past the %d MiB limit", res.PeakRSS>>20, tc.lim.Memory>>20)
			}
		})
	}
}

func TestRunReportsExitAndOutput(t *testing.T) {
	res, err := Run(context.Background(), child("echo"), Limits{Wall: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "out" || res.Stderr != "err" || res.ExitCode != 3 || res.Limit != "" {
		t.Fatalf("%+v", res)
	}
	if res.Describe(Limits{}) != "exited with code 3" {
		t.Error(res.Describe(Limits{}))
	}
	crash, err := Run(context.Background(), child("crash"), Limits{Wall: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if crash.ExitCode != 2 || !strings.Contains(crash.Stderr, "panic: the child crashes") {
		t.Fatalf("crash: %+v", crash)
	}
}

func TestRunStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := Run(ctx, child("sleep"), Limits{})
	if err == nil || res.Signal != syscall.SIGKILL {
		t.Fatalf("err %v, result %+v", err, res)
	}
}
