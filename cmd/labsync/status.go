package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/labsync/labsync/lab"
	"github.com/labsync/labsync/reconciler"
)

// runStatus prints the lab at a glance from a running daemon's API.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", envOr("LABSYNC_SERVER", fmt.Sprintf("http://127.0.0.1:%d", lab.DefaultDaemonPort)), "address of labsync serve (env: LABSYNC_SERVER)")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitError{0}
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{"status takes no arguments"}
	}
	base := strings.TrimRight(*server, "/")
	var sum reconciler.Summary
	var objects []reconciler.ObjectStatus
	for path, into := range map[string]any{"/api/v1/status": &sum, "/api/v1/agents": &objects} {
		if err := getJSON(ctx, base+path, into); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"status": sum, "objects": objects})
	}
	when := "no pass yet"
	if !sum.LastRun.IsZero() {
		when = fmt.Sprintf("last pass %s %s ago", sum.LastResult, time.Since(sum.LastRun).Round(time.Second))
	}
	fmt.Fprintf(stdout, "Lab %s at %s: %s; %d agent(s), %d service(s), %d drifted, %d not healthy\n",
		sum.Lab, short(sum.Revision), when, sum.Agents, sum.Services, sum.Drifted, sum.Unhealthy)
	if sum.Invalid != "" {
		fmt.Fprintf(stdout, "Revision %s is invalid and not applied; the host stays at %s.\n", short(sum.Invalid), short(sum.LastGood))
	}
	if sum.LastError != "" {
		fmt.Fprintf(stdout, "Last error: %s\n", sum.LastError)
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tSTATE\tHEALTH\tDRIFT\tLAST ERROR")
	for _, o := range objects {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", o.Kind, o.Name, o.State, o.Health, orDash(o.Drift), o.LastError)
	}
	return tw.Flush()
}

func getJSON(ctx context.Context, url string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("labsync serve not reachable (--server or LABSYNC_SERVER): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(into)
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
