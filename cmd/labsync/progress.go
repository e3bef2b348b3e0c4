package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/labsync/labsync/reconciler"
)

// progress prints apply progress, one line per step and per result.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	done  int
}

func (p *progress) step(a *reconciler.Action, s reconciler.Step) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "  %s %s %s: %s\n", a.Kind, a.ObjectKind, a.Object, s)
}

func (p *progress) result(r reconciler.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	line := fmt.Sprintf("[%d/%d] %s %s %s: %s (%s)", p.done, p.total, r.Action.Kind, r.Action.ObjectKind, r.Action.Object, r.Status, r.Duration.Round(time.Millisecond))
	if r.Error != "" {
		line += ": " + r.Error
	}
	fmt.Fprintln(p.w, line)
}
