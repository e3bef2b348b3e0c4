//go:build !linux

package sandbox

import (
	"syscall"
	"time"
)

// Outside Linux only the wall time and output limits apply.

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func limitCPU(int, time.Duration) error { return nil }

func memorySupported() bool { return false }

func memory(int) (rss, peak int64) { return 0, 0 }
