package lab

import (
	"fmt"
	"sort"
	"strings"

	"github.com/labsync/labsync/internal/yamlcheck"
)

// Severity says whether a diagnostic stops a revision from being applied.
type Severity int

// Severities.
const (
	SeverityError Severity = iota
	SeverityWarning
)

func (s Severity) String() string {
	if s == SeverityWarning {
		return "warning"
	}
	return "error"
}

// Diagnostic is one problem found in a lab repository: where it is, what is
// wrong and what would be right.
type Diagnostic struct {
	File     string   `json:"file"`
	Line     int      `json:"line,omitempty"`
	Severity Severity `json:"-"`
	Message  string   `json:"message"`
	// SUT is the SUT an error holds; empty for an error that blocks the
	// whole lab (in lab.yaml, the compose file, or reading the repository).
	SUT string `json:"sut,omitempty"`
	// labWide keeps an error about a SUT's file from being scoped to it
	// (the read budget: what was not read is unknown).
	labWide bool
}

// String formats d as "file:line: severity: message".
func (d Diagnostic) String() string {
	loc := d.File
	if d.Line > 0 {
		loc = fmt.Sprintf("%s:%d", d.File, d.Line)
	}
	if loc == "" {
		return fmt.Sprintf("%s: %s", d.Severity, d.Message)
	}
	return fmt.Sprintf("%s: %s: %s", loc, d.Severity, d.Message)
}

// Diagnostics is the list of problems of one repository.
type Diagnostics []Diagnostic

// Blocking reports whether any error blocks the whole lab (an error that
// holds a SUT does not).
func (ds Diagnostics) Blocking() bool {
	for _, d := range ds {
		if d.Severity == SeverityError && d.SUT == "" {
			return true
		}
	}
	return false
}

// HasErrors reports whether any diagnostic is an error.
func (ds Diagnostics) HasErrors() bool {
	for _, d := range ds {
		if d.Severity == SeverityError {
			return true
		}
	}
	return false
}

// Count returns the number of errors and warnings.
func (ds Diagnostics) Count() (errs, warns int) {
	for _, d := range ds {
		if d.Severity == SeverityError {
			errs++
		} else {
			warns++
		}
	}
	return errs, warns
}

// sort orders diagnostics by file, line and message, so output is stable.
func (ds Diagnostics) sort() {
	sort.SliceStable(ds, func(i, j int) bool {
		a, b := ds[i], ds[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Message < b.Message
	})
}

// String formats all diagnostics, one a line.
func (ds Diagnostics) String() string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteString(d.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// ValidationError is returned when a repository has errors: it must not be
// applied. It carries every diagnostic, warnings included.
type ValidationError struct {
	Diagnostics Diagnostics
}

func (e *ValidationError) Error() string {
	errs, _ := e.Diagnostics.Count()
	for _, d := range e.Diagnostics {
		if d.Severity == SeverityError {
			if errs == 1 {
				return "invalid lab: " + d.String()
			}
			return fmt.Sprintf("invalid lab: %s (and %d more errors)", d.String(), errs-1)
		}
	}
	return "invalid lab"
}

// diags collects diagnostics while a repository is loaded.
type diags struct{ list Diagnostics }

func (c *diags) errorf(file string, line int, format string, args ...any) {
	c.list = append(c.list, Diagnostic{File: file, Line: line, Severity: SeverityError, Message: fmt.Sprintf(format, args...)})
}

// labErrorf is errorf for an error that blocks the lab even when it is
// about a SUT's file.
func (c *diags) labErrorf(file string, line int, format string, args ...any) {
	c.list = append(c.list, Diagnostic{File: file, Line: line, Severity: SeverityError, Message: fmt.Sprintf(format, args...), labWide: true})
}

func (c *diags) warnf(file string, line int, format string, args ...any) {
	c.list = append(c.list, Diagnostic{File: file, Line: line, Severity: SeverityWarning, Message: fmt.Sprintf(format, args...)})
}

func (c *diags) add(file string, fs ...yamlcheck.Finding) {
	for _, f := range fs {
		sev := SeverityError
		if f.Warning {
			sev = SeverityWarning
		}
		c.list = append(c.list, Diagnostic{File: file, Line: f.Line, Severity: sev, Message: f.Msg})
	}
}
