package runtime

import (
	"errors"
	"testing"
	"time"
)

func TestStopOptions(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    int // -1: the engine's default (no timeout sent)
		err     error
	}{
		{0, -1, nil},
		{300 * time.Millisecond, 1, nil},
		{time.Second, 1, nil},
		{1500 * time.Millisecond, 2, nil},
		{-time.Second, 0, ErrNegativeStopTimeout},
	} {
		opts, err := stopOptions(tc.timeout)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.timeout, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		got := -1
		if opts.Timeout != nil {
			got = *opts.Timeout
		}
		if got != tc.want {
			t.Errorf("%s: %d s, want %d", tc.timeout, got, tc.want)
		}
	}
}
