package console

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cleanroom-ci/cleanroom/api"
)

// followPing is how often an idle log stream sends a comment (keeps
// proxies from closing it and notices a sign-out).
var followPing = 15 * time.Second

// handleLogText serves the whole stored log as plain text.
func (c *Console) handleLogText(w http.ResponseWriter, r *http.Request, p Principal) error {
	id := r.PathValue("id")
	if _, err := c.b.Job(r.Context(), p, id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var off int64
	for started := false; ; {
		data, err := c.b.ReadLog(r.Context(), p, id, off, 256<<10)
		if err != nil {
			if !started {
				return err
			}
			return nil // headers are out: the client sees a short body
		}
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if len(data) == 0 {
			return nil
		}
		if _, err := w.Write(data); err != nil {
			return nil
		}
		off += int64(len(data))
	}
}

// handleLogEvents streams a job's log from ?offset= (or the Last-Event-ID
// an EventSource sends when it reconnects) as server-sent events: "log"
// events carry a chunk as a JSON string with the next offset as id, one
// "end" event carries the final state once the job has ended and its whole
// log was sent. The page's script appends chunks as text, never as HTML.
func (c *Console) handleLogEvents(w http.ResponseWriter, r *http.Request, p Principal) error {
	ctx := r.Context()
	id := r.PathValue("id")
	if _, err := c.b.Job(ctx, p, id); err != nil {
		return err
	}
	offStr := r.Header.Get("Last-Event-ID")
	if offStr == "" {
		offStr = r.URL.Query().Get("offset")
	}
	var off int64
	if offStr != "" {
		n, err := strconv.ParseInt(offStr, 10, 64)
		if err != nil || n < 0 {
			return api.FieldErrors{{Field: "offset", Message: "must be a non-negative byte offset"}}
		}
		off = n
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return errors.New("streaming the log: the connection cannot flush")
	}
	ck, _ := r.Cookie(CookieName)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	if _, err := io.WriteString(w, ": following\n\n"); err != nil {
		return nil
	}
	fl.Flush()
	ping := time.NewTicker(followPing)
	defer ping.Stop()
	// The session and its token are checked again at least every
	// followPing, streaming or idle: signing out, a revoked or expired
	// token ends the stream, as it ends every page.
	lastCheck := time.Now()
	allowed := func() bool {
		lastCheck = time.Now()
		tok, ok := c.sessions.get(ck.Value)
		if !ok {
			return false
		}
		_, err := c.b.Authenticate(ctx, tok)
		return err == nil
	}
	for {
		if time.Since(lastCheck) >= followPing && !allowed() {
			return nil
		}
		changed := c.b.LogChanged(id)
		data, err := c.b.ReadLog(ctx, p, id, off, 64<<10)
		if err != nil {
			return nil
		}
		if len(data) > 0 {
			data = wholeRunes(data)
			off += int64(len(data))
			text, _ := json.Marshal(string(data))
			if _, err := fmt.Fprintf(w, "event: log\nid: %d\ndata: %s\n\n", off, text); err != nil {
				return nil
			}
			fl.Flush()
			continue
		}
		j, err := c.b.Job(ctx, p, id)
		if err != nil {
			return nil
		}
		if api.Terminal(j.State) {
			end, _ := json.Marshal(map[string]any{"state": j.State, "reason": j.Reason, "exit_code": j.ExitCode})
			_, _ = fmt.Fprintf(w, "event: end\ndata: %s\n\n", end)
			fl.Flush()
			return nil
		}
		select {
		case <-changed:
		case <-ping.C:
			if !allowed() {
				return nil // signed out, expired or revoked
			}
			if _, err := io.WriteString(w, ": ping\n\n"); err != nil {
				return nil
			}
			fl.Flush()
		case <-ctx.Done():
			return nil
		case <-c.b.Done():
			return nil
		}
	}
}

// wholeRunes drops a UTF-8 sequence cut at the end of data (the next chunk
// starts with it), unless that would leave nothing.
func wholeRunes(data []byte) []byte {
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if i > 0 && !utf8.FullRune(data[i:]) {
				return data[:i]
			}
			break
		}
	}
	return data
}

// handleArtifact downloads an artifact. It is always an attachment of an
// opaque type, so an HTML or SVG artifact can never run on the console's
// origin.
func (c *Console) handleArtifact(w http.ResponseWriter, r *http.Request, p Principal) error {
	rc, a, err := c.b.OpenArtifact(r.Context(), p, r.PathValue("id"), r.PathValue("name"))
	if err != nil {
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	api.SetDownloadHeaders(w.Header(), path.Base(a.Name))
	w.Header().Set("Content-Length", strconv.FormatInt(a.Size, 10))
	w.Header().Set("X-Cleanroom-SHA256", a.SHA256)
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, rc)
	return nil
}

// exportEvents streams the explorer's filtered set (every match, no paging).
func (c *Console) exportEvents(w http.ResponseWriter, r *http.Request, p Principal, ctype, file string, write func(api.EgressEvent) error, flush func() error) error {
	f, err := egressQuery(r.URL.Query())
	if err != nil {
		return err
	}
	started := false
	start := func() {
		if !started {
			w.Header().Set("Content-Type", ctype)
			api.SetDownloadHeaders(w.Header(), file)
			w.WriteHeader(http.StatusOK)
			started = true
		}
	}
	err = c.b.Egress(r.Context(), p, f, func(e api.EgressEvent) error {
		start()
		return write(e)
	})
	if err != nil && !started {
		return err
	}
	start()
	if err == nil {
		_ = flush()
	}
	return nil
}

func (c *Console) handleExportJSONL(w http.ResponseWriter, r *http.Request, p Principal) error {
	enc := json.NewEncoder(w)
	return c.exportEvents(w, r, p, "application/x-ndjson", "egress.jsonl", func(e api.EgressEvent) error { return enc.Encode(e) },
		func() error { return nil })
}

// CSVHeader is the first row of the CSV export.
var CSVHeader = []string{"time", "runner", "job", "sandbox", "proto", "src", "dst", "domain", "answer", "verdict", "rule", "process"}

func (c *Console) handleExportCSV(w http.ResponseWriter, r *http.Request, p Principal) error {
	cw := csv.NewWriter(w)
	header := false
	return c.exportEvents(w, r, p, "text/csv; charset=utf-8", "egress.csv", func(e api.EgressEvent) error {
		if !header {
			header = true
			if err := cw.Write(CSVHeader); err != nil {
				return err
			}
		}
		proc := e.Process.String()
		return cw.Write([]string{e.Time.UTC().Format(time.RFC3339Nano), cell(e.Runner), cell(e.Job), cell(e.Sandbox), cell(e.Proto),
			cell(e.Src), cell(e.Dst), cell(e.Domain), cell(e.Answer), cell(e.Verdict), cell(e.Rule), cell(proc)})
	}, func() error {
		if !header {
			if err := cw.Write(CSVHeader); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	})
}

// cell defuses a value a spreadsheet would run as a formula (it starts
// with = + - @, a tab or a carriage return) by prefixing a quote: a domain
// in an egress event is chosen by whoever wrote the build's malware.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
