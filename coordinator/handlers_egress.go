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
	enc := json.NewEncoder(w)
	started := false
	err := s.store.QueryEgress(r.Context(), sf, func(e api.EgressEvent) error {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		return enc.Encode(e)
	})
	if err != nil && !started {
		return err
	}
	if !started {
		w.WriteHeader(http.StatusOK)
	}
	return nil
}
