package sandbox

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func sysProcAttr() *syscall.SysProcAttr {
	// Its own process group, so a kill ends what it started too; and it
	// dies with the process that started it.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// limitCPU sets the CPU time limit of pid: the kernel kills the process
// with SIGKILL when it reaches it (soft and hard limits are equal).
func limitCPU(pid int, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	secs := uint64((d + time.Second - 1) / time.Second)
	return unix.Prlimit(pid, unix.RLIMIT_CPU, &unix.Rlimit{Cur: secs, Max: secs}, nil)
}

func memorySupported() bool { return true }

// memory reads the resident memory of pid and its high-water mark from
// /proc, in bytes; 0 when unknown. (The rusage of an ended process is no
// help: after a vfork it carries the parent's peak.)
func memory(pid int) (rss, peak int64) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	return statusKB(data, "VmRSS:"), statusKB(data, "VmHWM:")
}

func statusKB(data []byte, key string) int64 {
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return 0
	}
	fields := bytes.Fields(data[i+len(key):])
	if len(fields) == 0 {
		return 0
	}
	kb, err := strconv.ParseInt(string(fields[0]), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}
