package reconciler

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the plan as a table a person reads in a terminal or a
// pull-request comment's code block.
func (p *Changeset) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Lab %s at revision %s\n\n", p.Lab, p.Revision)
	switch {
	case p.Empty() && len(p.Held)+len(p.Blocked) > 0:
		b.WriteString("No actions: what is held or blocked (below) stays as it is.\n")
	case p.Empty():
		b.WriteString("No changes: the host matches the lab.\n")
	default:
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ACTION\tKIND\tOBJECT\tTARGET\tREASON")
		for _, a := range p.Actions {
			reasons := a.Reasons
			if len(reasons) == 0 {
				reasons = []string{""}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Kind, a.ObjectKind, a.Object, a.Target, reasons[0])
			for _, r := range reasons[1:] {
				fmt.Fprintf(tw, "\t\t\t\t%s\n", r)
			}
		}
		tw.Flush()
	}
	if len(p.Held) > 0 {
		fmt.Fprintf(&b, "\nHeld (%d): neither created, changed nor removed until their files are fixed; their containers run as they are:\n", len(p.Held))
		for _, h := range p.Held {
			c := "no labsync container"
			if h.Container != "" {
				c = "container " + h.Container + " kept"
			}
			fmt.Fprintf(&b, "  %s (%s)\n", h.Name, c)
			for _, r := range h.Reasons {
				fmt.Fprintf(&b, "      %s\n", r)
			}
		}
	}
	if len(p.Blocked) > 0 {
		fmt.Fprintf(&b, "\nBlocked (%d): not made by labsync, in the way; --adopt takes them over:\n", len(p.Blocked))
		for _, bl := range p.Blocked {
			fmt.Fprintf(&b, "  %s %s: %s\n", bl.Kind, bl.Object, bl.Reason)
		}
	}
	if len(p.Warnings) > 0 {
		b.WriteString("\nWarnings:\n")
		for _, w := range p.Warnings {
			fmt.Fprintf(&b, "  - %s\n", w)
		}
	}
	fmt.Fprintf(&b, "\n%s\n", p.Summary())
	_, err := io.WriteString(w, b.String())
	return err
}

// Summary is a one-line count of the plan's actions.
func (p *Changeset) Summary() string {
	c := p.Counts()
	other := len(p.Actions) - c[Create] - c[Recreate] - c[Start] - c[Remove] - c[Adopt]
	adopt := ""
	if c[Adopt] > 0 {
		adopt = fmt.Sprintf(", %d to take over", c[Adopt])
	}
	s := fmt.Sprintf("Plan: %d to create, %d to recreate%s, %d to start, %d to remove, %d other; %d unchanged.",
		c[Create], c[Recreate], adopt, c[Start], c[Remove], other, len(p.Unchanged))
	if len(p.Held) > 0 {
		s = strings.TrimSuffix(s, ".") + fmt.Sprintf("; %d held.", len(p.Held))
	}
	if len(p.Blocked) > 0 {
		s = strings.TrimSuffix(s, ".") + fmt.Sprintf("; %d blocked.", len(p.Blocked))
	}
	return s
}
