package coordinator

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// MaxEgressBatch caps the events in one POST.
const MaxEgressBatch = 10000

func (s *Server) handlePostEgress(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	seq, err := strconv.ParseInt(r.URL.Query().Get("seq"), 10, 64)
	if err != nil || seq < 0 {
		return api.FieldErrors{{Field: "seq", Message: "required: the job-wide number of the first event"}}
	}
	body, err := readBody(w, r, 8<<20)
	if err != nil {
		return err
	}
	events, err := parseEvents(body)
	if err != nil {
		return err
	}
	// Runner and job come from the lease, never from the agent's events
	// (an agent cannot file events under another job); this is the one
	// place the coordinator stamps them.
	now := s.now().UTC()
	for i := range events {
		e := &events[i]
		e.Runner, e.Job = f.RunnerID, f.JobID
		if e.Time.IsZero() {
			e.Time = now
		}
		e.Time = e.Time.UTC()
	}
	if err := s.store.AddEgress(r.Context(), f, seq, events); err != nil {
		return err
	}
	s.metrics.egressStored(events)
	s.changed(egressKey)
	writeJSON(w, http.StatusOK, map[string]int{"stored": len(events)})
	return nil
}

// parseEvents accepts a JSON array or JSON lines and validates each event.
func parseEvents(body []byte) ([]api.EgressEvent, error) {
	var events []api.EgressEvent
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		if err := json.Unmarshal(trimmed, &events); err != nil {
			return nil, api.FieldErrors{{Field: "body", Message: "decoding event array: " + err.Error()}}
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for i := 0; sc.Scan(); i++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			var e api.EgressEvent
			if err := json.Unmarshal(line, &e); err != nil {
				return nil, api.FieldErrors{{Field: fmt.Sprintf("events[%d]", len(events)), Message: err.Error()}}
			}
			events = append(events, e)
		}
		if err := sc.Err(); err != nil {
			return nil, api.FieldErrors{{Field: "body", Message: err.Error()}}
		}
	}
	if len(events) > MaxEgressBatch {
		return nil, api.FieldErrors{{Field: "body", Message: fmt.Sprintf("at most %d events per request", MaxEgressBatch)}}
	}
	var fe api.FieldErrors
	for i, e := range events {
		if e.Verdict != api.VerdictAllow && e.Verdict != api.VerdictDeny {
			fe = append(fe, api.FieldError{Field: fmt.Sprintf("events[%d].verdict", i), Message: "must be allow or deny"})
		}
		if e.Proto == "" {
			fe = append(fe, api.FieldError{Field: fmt.Sprintf("events[%d].proto", i), Message: "required"})
		}
	}
	if len(fe) > 0 {
		return nil, fe
	}
	return events, nil
}

// egressKey is the hub key notified whenever events are stored: every
// follow stream waits on it.
const egressKey = "egress"

// egressPage bounds the events a follow stream reads in one query, so it
// holds no read transaction while writing to a slow client.
const egressPage = 1000

// egressWriteTimeout ends a follow stream whose client has not taken a
// write for this long; it resumes from its last cursor when it reconnects.
const egressWriteTimeout = time.Minute

// handleQueryEgress answers GET /v1/egress: the matching events as JSON
// lines, each an api.EgressRecord. With after=N, the events with a cursor
// greater than N in cursor order; with follow=1 (after defaults to 0) the
// stream then stays open and sends new events as they are stored.
func (s *Server) handleQueryEgress(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := api.EgressFilter{Job: q.Get("job"), Runner: q.Get("runner"), Verdict: q.Get("verdict")}
	var fe api.FieldErrors
	for _, tf := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(tf.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				fe = append(fe, api.FieldError{Field: tf.name, Message: "must be an RFC 3339 time"})
			}
			*tf.dst = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fe = append(fe, api.FieldError{Field: "limit", Message: "must be a positive number"})
		}
		f.Limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			fe = append(fe, api.FieldError{Field: "after", Message: "must be a cursor (0 or more)"})
		}
		f.After = &n
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	if follow && f.After == nil {
		f.After = new(int64)
	}
	if err := f.Validate(); err != nil {
		fe = append(fe, api.PrefixFields("", err)...)
	}
	if len(fe) > 0 {
		return fe
	}
	sf := store.EgressFilter{EgressFilter: f}
	if p := principalFrom(r.Context()); p.kind == principalSubmit {
		sf.Submitter = p.tokenID
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if follow {
		s.followEgress(w, r, sf)
		return nil
	}
	enc := json.NewEncoder(w)
	started := false
	err := s.store.QueryEgressRecords(r.Context(), sf, func(rec api.EgressRecord) error {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		return enc.Encode(rec)
	})
	if err != nil && !started {
		return err
	}
	if !started {
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

// followEgress streams the events after *f.After and then every event
// stored later, a page at a time, woken by the hub. When it has been idle
// for EgressHeartbeat it writes an empty line (proxies see traffic; clients
// skip it) and checks the request's token again, ending the stream if it
// was revoked or expired. It ends with the server, the client, a write the
// client has not taken for egressWriteTimeout, or after f.Limit events.
// The client resumes after the last cursor it received: nothing is lost
// or repeated, whichever way the stream ended.
func (s *Server) followEgress(w http.ResponseWriter, r *http.Request, f store.EgressFilter) {
	ctx := r.Context()
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(egressWriteTimeout)) // not every writer has one
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: pass lines on at once
	w.WriteHeader(http.StatusOK)
	if !write(nil) {
		return
	}
	after, left := *f.After, f.Limit
	hb := time.NewTicker(s.cfg.EgressHeartbeat)
	defer hb.Stop()
	var buf bytes.Buffer
	for {
		changed := s.hub.wait(egressKey)
		page := f
		page.After, page.Limit = &after, egressPage
		if left > 0 {
			page.Limit = min(left, egressPage)
		}
		buf.Reset()
		enc := json.NewEncoder(&buf)
		n, last := 0, after
		err := s.store.QueryEgressRecords(ctx, page, func(rec api.EgressRecord) error {
			n, last = n+1, rec.Cursor
			return enc.Encode(rec)
		})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("following egress events", "error", err)
			}
			return // the headers are out: the client sees the stream end and resumes
		}
		if n > 0 {
			if !write(buf.Bytes()) {
				return
			}
			after = last
			if left > 0 {
				if left -= n; left == 0 {
					return
				}
			}
			if n == page.Limit {
				// More are waiting; a flood still checks the token at
				// every heartbeat, so a revoked follower stops.
				select {
				case <-hb.C:
					if _, err := s.authenticate(r); err != nil {
						return
					}
				default:
				}
				continue
			}
		}
		select {
		case <-changed:
		case <-hb.C:
			if _, err := s.authenticate(r); err != nil {
				return
			}
			if !write([]byte("\n")) {
				return
			}
		case <-ctx.Done():
			return
		case <-s.stopCtx.Done():
			return
		}
	}
}
