package forge

import (
	"bytes"
	"fmt"
	"html"
	"net/url"
	"strings"

	"github.com/labsync/labsync/internal/redact"
	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// Marker is the hidden mark of a lab's sticky comment.
func Marker(labName string) string { return "<!-- labsync:lab=" + labName + " -->" }

// PlanView is what a plan comment shows.
type PlanView struct {
	Lab string
	// Head is the pull request's head commit.
	Head string
	// BlobURL is the web address files are linked under, e.g.
	// https://github.com/owner/repo/blob/; empty: no links.
	BlobURL     string
	Diagnostics lab.Diagnostics
	// Plan is nil when the revision is invalid.
	Plan *reconciler.Changeset
	Fork bool
}

// RenderPlan renders the sticky comment for a pull request's plan.
func RenderPlan(v PlanView) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n### labsync · `%s` · plan for `%s`\n\n", Marker(v.Lab), v.Lab, short(v.Head))
	errs, warns := v.Diagnostics.Count()
	if v.Diagnostics.Blocking() || (errs > 0 && v.Plan == nil) {
		fmt.Fprintf(&b, "❌ **This revision is invalid** (%d error(s), %d warning(s)); labsync would not apply it.\n\n", errs, warns)
	} else if v.Plan != nil {
		c := v.Plan.Counts()
		other := len(v.Plan.Actions) - c[reconciler.Create] - c[reconciler.Recreate] - c[reconciler.Remove]
		verdict := "✅ Valid."
		if n := len(v.Plan.Held); n > 0 {
			verdict = fmt.Sprintf("⚠️ **%d SUT(s) held** by errors in their files (below): on merge labsync leaves them as they run now, neither created, changed nor removed, until the files are fixed. The rest of the lab is valid.", n)
		}
		if v.Plan.Empty() {
			fmt.Fprintf(&b, "%s Merging changes nothing else on the lab host (%d object(s) unchanged).\n\n", verdict, len(v.Plan.Unchanged))
		} else {
			fmt.Fprintf(&b, "%s On merge labsync will **create %d, recreate %d, remove %d** and do %d other action(s); %d object(s) stay unchanged.\n\n",
				verdict, c[reconciler.Create], c[reconciler.Recreate], c[reconciler.Remove], other, len(v.Plan.Unchanged))
		}
	}
	if len(v.Diagnostics) > 0 {
		b.WriteString("| | Where | Problem |\n|---|---|---|\n")
		for _, d := range v.Diagnostics {
			icon := "❌"
			if d.Severity == lab.SeverityWarning {
				icon = "⚠️"
			}
			msg := cell(d.Message)
			if d.SUT != "" && d.Severity == lab.SeverityError {
				msg += " <sub>(holds <code>" + cell(d.SUT) + "</code>)</sub>"
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", icon, v.link(d), msg)
		}
		b.WriteString("\n")
	}
	if v.Plan != nil && len(v.Plan.Held) > 0 {
		b.WriteString("| Held SUT | Its container | Why |\n|---|---|---|\n")
		for _, h := range v.Plan.Held {
			c := "none"
			if h.Container != "" {
				c = "<code>" + cell(h.Container) + "</code>, kept as it runs"
			}
			fmt.Fprintf(&b, "| <code>%s</code> | %s | %s |\n", cell(h.Name), c, cell(strings.Join(h.Reasons, "; ")))
		}
		b.WriteString("\n")
	}
	if v.Plan != nil && len(v.Plan.Blocked) > 0 {
		b.WriteString("| Blocked | By what labsync did not make | Why |\n|---|---|---|\n")
		for _, bl := range v.Plan.Blocked {
			fmt.Fprintf(&b, "| %s <code>%s</code> | <code>%s</code> | %s |\n", bl.Kind, cell(bl.Object), cell(bl.By), cell(bl.Reason))
		}
		b.WriteString("\n")
	}
	if v.Plan != nil && !v.Plan.Empty() {
		b.WriteString("| Action | Object | Why |\n|---|---|---|\n")
		for _, a := range v.Plan.Actions {
			fmt.Fprintf(&b, "| %s | %s <code>%s</code> | %s |\n", a.Kind, a.ObjectKind, cell(a.Object), cell(strings.Join(a.Reasons, "; ")))
		}
		b.WriteString("\n")
	}
	if v.Plan != nil {
		for _, w := range v.Plan.Warnings {
			fmt.Fprintf(&b, "> ⚠️ %s\n\n", cell(w))
		}
		var table bytes.Buffer
		_ = v.Plan.WriteTable(&table)
		text := table.String()
		if len(text) > maxPlanText {
			text = text[:maxPlanText] + "\n… (cut; labsync plan shows everything)\n"
		}
		// <pre> with escaped text: nothing in the plan can end the block.
		fmt.Fprintf(&b, "<details><summary>Full plan</summary>\n\n<pre>\n%s</pre>\n</details>\n\n", html.EscapeString(text))
	}
	if v.Fork {
		b.WriteString("<sub>Pull request from a fork: planned only. Nothing from it is built or run.</sub>\n")
	}
	b.WriteString("<sub>The plan is made against the lab host as it runs now; it is updated on every push.</sub>\n")
	return b.String()
}

// maxPlanText bounds the full plan in a comment, well under GitHub's limit.
const maxPlanText = 40000

func (v PlanView) link(d lab.Diagnostic) string {
	loc := d.File
	if d.Line > 0 {
		loc = fmt.Sprintf("%s:%d", d.File, d.Line)
	}
	// File names come from the pull request: shown as escaped code, and
	// linked with every path segment escaped.
	shown := "<code>" + cell(loc) + "</code>"
	if v.BlobURL == "" || d.File == "" {
		return shown
	}
	segs := strings.Split(d.File, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	anchor := ""
	if d.Line > 0 {
		anchor = fmt.Sprintf("#L%d", d.Line)
	}
	return fmt.Sprintf(`<a href="%s%s/%s%s">%s</a>`, html.EscapeString(v.BlobURL), url.PathEscape(v.Head), strings.Join(segs, "/"), anchor, shown)
}

// ApplyView is what an apply-result comment shows.
type ApplyView struct {
	Lab      string
	Revision string
	Results  []reconciler.Result
	Plan     *reconciler.Changeset
	// Invalid says the revision did not validate and was not applied;
	// Diagnostics say why.
	Invalid     bool
	Diagnostics lab.Diagnostics
}

// RenderApply renders the sticky comment after a merged revision was
// applied.
func RenderApply(v ApplyView) string {
	var b strings.Builder
	if v.Invalid {
		fmt.Fprintf(&b, "%s\n### labsync · `%s` · `%s` not applied\n\n❌ This revision is invalid, so labsync did not apply it; the lab host stays at the last good revision. Fix it in a new pull request.\n\n", Marker(v.Lab), v.Lab, short(v.Revision))
		for _, d := range v.Diagnostics {
			if d.Severity == lab.SeverityError {
				fmt.Fprintf(&b, "- <code>%s</code>\n", cell(d.String()))
			}
		}
		return b.String()
	}
	fmt.Fprintf(&b, "%s\n### labsync · `%s` · applied `%s`\n\n", Marker(v.Lab), v.Lab, short(v.Revision))
	failed := 0
	for _, r := range v.Results {
		if r.Status != reconciler.StatusOK && r.Status != reconciler.StatusDeferred {
			failed++
		}
	}
	if v.Plan != nil && len(v.Plan.Held) > 0 {
		names := make([]string, len(v.Plan.Held))
		for i, h := range v.Plan.Held {
			names[i] = "<code>" + cell(h.Name) + "</code>"
		}
		fmt.Fprintf(&b, "⚠️ %d SUT(s) held by errors in their files, left as they run: %s. Everything else was applied.\n\n", len(names), strings.Join(names, ", "))
	}
	switch {
	case len(v.Results) == 0:
		b.WriteString("✅ Applied: the lab host already matched this revision.\n\n")
	case failed == 0:
		fmt.Fprintf(&b, "✅ Applied: %d action(s) succeeded.\n\n", len(v.Results))
	default:
		fmt.Fprintf(&b, "❌ %d of %d action(s) did not succeed. labsync retries with backoff; fix the cause or revert.\n\n", failed, len(v.Results))
	}
	if len(v.Results) > 0 {
		b.WriteString("| Object | Action | Result | Detail |\n|---|---|---|---|\n")
		for _, r := range v.Results {
			icon := map[reconciler.Status]string{reconciler.StatusOK: "✅", reconciler.StatusDeferred: "⏳"}[r.Status]
			if icon == "" {
				icon = "❌"
			}
			detail := r.Error
			if detail == "" {
				detail = strings.Join(r.Action.Reasons, "; ")
			}
			fmt.Fprintf(&b, "| %s <code>%s</code> | %s | %s %s | %s |\n", r.Action.ObjectKind, cell(r.Action.Object), r.Action.Kind, icon, r.Status, cell(Redact(detail)))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	// HTML and the Markdown that makes links and code: text from a pull
	// request (file names, keys) must render as text.
	s = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "`", "&#96;", "[", "&#91;", "]", "&#93;").Replace(s)
	s = strings.ReplaceAll(s, "|", "\\|")
	s = strings.ReplaceAll(s, "\r", "")
	return strings.ReplaceAll(s, "\n", "<br>")
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// Redact hides values that look like secrets in text such as log tails.
func Redact(s string) string { return redact.String(s) }

// Truncate cuts a comment to GitHub's limit, saying so.
func Truncate(body string) string {
	if len(body) <= MaxCommentSize {
		return body
	}
	note := "\n\n… (cut: the comment was over GitHub's 65536-character limit; `labsync plan` shows everything)\n"
	closing := "\n</pre></details>\n"
	cut := MaxCommentSize - len(note) - len(closing)
	for cut > 0 && !utf8Start(body[cut]) {
		cut--
	}
	head := body[:cut]
	// Close what the cut left open, so the note is not hidden in a
	// collapsed block of code.
	if strings.Count(head, "<pre>") > strings.Count(head, "</pre>") {
		head += "\n</pre>"
	}
	if strings.Count(head, "<details>") > strings.Count(head, "</details>") {
		head += "</details>\n"
	}
	return head + note
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
