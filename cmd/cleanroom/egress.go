package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	var f api.EgressFilter
	var only egressMatch
	var denied, follow bool
	var since, until, statePath string
	var after int64
	cmd := &cobra.Command{
		Use:   "egress",
		Short: "Query or follow the egress audit log (every allowed and denied attempt, DNS included)",
		Long: `Query egress events. By default a table; with --json one JSON object per line,
in the format of docs/egress-log.md plus the event's "cursor", ready for a SIEM.
--since and --until take an RFC 3339 time or a duration back from now (e.g. 24h, 7d).

Every stored event has a cursor, a number that increases with each event the
coordinator stores. --after N prints the events after cursor N, in cursor
order. --follow then keeps printing new events as they are stored, for ever:
when the connection breaks or the coordinator restarts it reconnects (with
backoff, saying so on stderr) after the last cursor it printed, so no event is
skipped or printed twice. --state FILE keeps the last cursor printed in FILE
and starts after it, so a restarted shipper (a systemd service) resumes where
it stopped (docs/egress-log.md, "Shipping to a SIEM").

Registry gateway events (proto http) show their request in the REQUEST
column: method, package@version (or the redacted path when no package is
known), status, cache hit or miss and bytes. --proto and --rule keep only
events of that proto or rule (e.g. --proto http --rule not-in-lockfile);
they filter what the coordinator returns, so with --limit fewer may print.`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) (retErr error) {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		if denied {
			f.Verdict = api.VerdictDeny
		}
		if f.Since, err = parseWhen(since); err != nil {
			return fmt.Errorf("parsing --since: %w", err)
		}
		if f.Until, err = parseWhen(until); err != nil {
			return fmt.Errorf("parsing --until: %w", err)
		}
		if cmd.Flags().Changed("after") {
			f.After = &after
		}
		out := cmd.OutOrStdout()
		var st *cursorFile
		if statePath != "" {
			st = &cursorFile{path: statePath, out: out}
			saved, ok, err := st.load()
			if err != nil {
				return err
			}
			if ok || f.After == nil {
				f.After = &saved
			}
			defer func() {
				if err := st.save(); err != nil && retErr == nil {
					retErr = err
				}
			}()
		}
		var print func(api.EgressRecord) error
		flush := func() error { return nil }
		switch {
		case cf.json:
			enc := json.NewEncoder(out)
			print = func(r api.EgressRecord) error { return enc.Encode(r) }
		case follow: // fixed widths: lines are printed as events come
			fmt.Fprintf(out, egressRowFormat, egressHeader...)
			print = func(r api.EgressRecord) error {
				_, err := fmt.Fprintf(out, egressRowFormat, egressRow(r)...)
				return err
			}
		default:
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			const row = "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n"
			fmt.Fprintf(tw, row, egressHeader...)
			print = func(r api.EgressRecord) error {
				_, err := fmt.Fprintf(tw, row, egressRow(r)...)
				return err
			}
			flush = tw.Flush
		}
		if only.proto != "" || only.rule != "" {
			show := print
			print = func(r api.EgressRecord) error {
				if !only.matches(r.EgressEvent) {
					return nil
				}
				return show(r)
			}
		}
		if st != nil {
			show := print
			print = func(r api.EgressRecord) error {
				if err := show(r); err != nil {
					return err
				}
				return st.note(r.Cursor)
			}
		}
		if follow {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return followEgress(ctx, cl, f, print, cmd.ErrOrStderr())
		}
		if err := cl.QueryEgressRecords(cmd.Context(), f, print); err != nil {
			return fmt.Errorf("querying egress: %w", err)
		}
		return flush()
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Job, "job", "", "only this job")
	fl.StringVar(&f.Runner, "runner", "", "only this runner id")
	fl.BoolVar(&denied, "denied", false, "only denied attempts")
	fl.StringVar(&only.proto, "proto", "", "only events of this proto (tcp, udp, dns, http, ...)")
	fl.StringVar(&only.rule, "rule", "", "only events of this rule (e.g. not-in-lockfile, registry-write, default-deny)")
	fl.StringVar(&since, "since", "", "from this time (RFC 3339, or a duration ago like 24h or 7d)")
	fl.StringVar(&until, "until", "", "before this time (RFC 3339, or a duration ago)")
	fl.IntVar(&f.Limit, "limit", 0, "at most this many events (0 = all); with --follow, exit after this many")
	fl.Int64Var(&after, "after", 0, "only events after this cursor, in cursor order (0 = from the first)")
	fl.StringVar(&statePath, "state", "", "keep the last cursor printed in this file and start after the one it holds (then --after is used only when the file does not exist yet)")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new events as they are stored, reconnecting after the last cursor printed (from cursor 0 without --after)")
	rootCmd.AddCommand(cmd)
}

var egressHeader = []any{"CURSOR", "TIME", "RUNNER", "JOB", "PROTO", "DESTINATION", "VERDICT", "RULE", "REQUEST", "PROCESS"}

// egressRowFormat lays out a followed table, whose widths cannot wait for
// the last row.
const egressRowFormat = "%-8s  %-23s  %-15s  %-18s  %-6s  %-36s  %-7s  %-18s  %-28s  %s\n"

// egressMatch keeps the events of one proto and/or rule (client side).
type egressMatch struct{ proto, rule string }

func (m egressMatch) matches(ev api.EgressEvent) bool {
	return (m.proto == "" || strings.EqualFold(ev.Proto, m.proto)) && (m.rule == "" || ev.Rule == m.rule)
}

// egressRequest is an http (registry gateway) event's request as one
// column: "GET left-pad@1.3.0 200 hit 1.2KiB"; "" for other protos.
func egressRequest(ev api.EgressEvent) string {
	if ev.Method == "" && ev.Path == "" {
		return ""
	}
	parts := []string{ev.Method}
	switch {
	case ev.Package != "" && ev.Version != "":
		parts = append(parts, ev.Package+"@"+ev.Version)
	case ev.Package != "":
		parts = append(parts, ev.Package)
	default:
		parts = append(parts, api.Printable(ev.Path))
	}
	if ev.Status != 0 {
		parts = append(parts, strconv.Itoa(ev.Status))
	}
	if ev.Cache != "" {
		parts = append(parts, ev.Cache)
	}
	if ev.Bytes > 0 {
		parts = append(parts, approxSize(ev.Bytes))
	}
	return strings.Join(parts, " ")
}

// approxSize is a size for people: "512B", "2KiB", "3.9MiB".
func approxSize(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + "B"
	}
	v, unit := float64(n), ""
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v, unit = v/1024, u
		if v < 1024 {
			break
		}
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d%s", int64(v), unit)
	}
	return fmt.Sprintf("%.1f%s", v, unit)
}

// egressRow is one table row; DESTINATION is "domain (dst)" when a domain
// is known, PROCESS "pid comm: cmdline [package]" when the agent named it.
func egressRow(r api.EgressRecord) []any {
	dst := r.Dst
	if r.Domain != "" {
		dst = r.Domain
		if r.Dst != "" {
			dst += " (" + r.Dst + ")"
		}
	}
	return []any{fmt.Sprint(r.Cursor), r.Time.Local().Format(timeFormatMilli), r.Runner, r.Job, r.Proto, orDash(dst), r.Verdict, orDash(r.Rule), orDash(egressRequest(r.EgressEvent)), orDash(r.Process.String())}
}

// printError is print's failure, which ends a follow (stdout is gone)
// instead of reconnecting.
type printError struct{ err error }

func (e *printError) Error() string { return e.err.Error() }

// followEgress prints the events after f.After (0 when nil), then new ones
// as they are stored, until ctx ends (nil) or f.Limit events were printed.
// A broken, silent or ended stream is resumed after the last cursor
// printed, after a backoff of 200 ms doubling to 30 s (reset by an event),
// with a line on stderr; a refused request (4xx: a revoked token, a bad
// filter) ends it with its error.
func followEgress(ctx context.Context, cl *api.Client, f api.EgressFilter, print func(api.EgressRecord) error, stderr io.Writer) error {
	var last int64
	if f.After != nil {
		last = *f.After
	}
	limit, printed := f.Limit, 0
	var delay time.Duration
	for {
		f.After, f.Limit = &last, 0
		if limit > 0 {
			f.Limit = limit - printed
		}
		got := 0
		err := cl.FollowEgress(ctx, f, func(r api.EgressRecord) error {
			if err := print(r); err != nil {
				return &printError{err}
			}
			last, got = r.Cursor, got+1
			return nil
		})
		printed += got
		var pe *printError
		switch {
		case ctx.Err() != nil:
			return nil
		case limit > 0 && printed >= limit:
			return nil
		case errors.As(err, &pe):
			return fmt.Errorf("printing egress events: %w", pe.err)
		case err != nil && !api.Retryable(err):
			return fmt.Errorf("following egress: %w", err)
		}
		if got > 0 {
			delay = 0
		}
		delay = min(max(2*delay, 200*time.Millisecond), 30*time.Second)
		wait := delay/2 + rand.N(delay/2+1) // jitter: many shippers do not reconnect at once
		why := "the coordinator ended the stream"
		if err != nil {
			why = err.Error()
		}
		fmt.Fprintf(stderr, "cleanroom: egress follow: %s; reconnecting after cursor %d in %s\n", why, last, wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// cursorFile keeps the last cursor printed in a file, so that a later run
// (a restarted shipper) starts after it. The file is replaced atomically,
// at most once a second while events come and once more at the end, and
// only after what was printed before it is synced when the output is a
// file: it never names an event that is not written, so a crash can make a
// run print again at most the last second's events, never skip one.
type cursorFile struct {
	path    string
	out     io.Writer
	cur     int64 // last cursor printed
	saved   int64
	savedAt time.Time
}

// load returns the cursor in the file; ok is false when there is none yet.
func (c *cursorFile) load() (cur int64, ok bool, err error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading cursor state: %w", err)
	}
	cur, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || cur < 0 {
		return 0, false, fmt.Errorf("reading cursor state %s: not a cursor: %q", c.path, b)
	}
	c.cur, c.saved = cur, cur
	return cur, true, nil
}

// note records a printed cursor, saving it when the last save is a
// second old.
func (c *cursorFile) note(cur int64) error {
	c.cur = cur
	if time.Since(c.savedAt) < time.Second {
		return nil
	}
	return c.save()
}

// save writes the last cursor printed, if it changed, after syncing the
// output.
func (c *cursorFile) save() error {
	if c.cur == c.saved && !c.savedAt.IsZero() {
		return nil
	}
	if f, ok := c.out.(*os.File); ok {
		_ = f.Sync() // a pipe or terminal cannot be synced; a file must be
	}
	tmp := c.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(c.cur, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("saving cursor state: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		return fmt.Errorf("saving cursor state: %w", err)
	}
	c.saved, c.savedAt = c.cur, time.Now()
	return nil
}

func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := api.ParseDuration(s); err == nil {
		return time.Now().Add(-d.D()), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}
