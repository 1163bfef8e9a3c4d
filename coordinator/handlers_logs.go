package coordinator

import (
	"net/http"
	"strconv"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// MaxLogChunk caps one log append request.
const MaxLogChunk = 1 << 20

func (s *Server) handleAppendLog(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || off < 0 {
		return api.FieldErrors{{Field: "offset", Message: "required: a non-negative byte offset"}}
	}
	data, err := readBody(w, r, MaxLogChunk)
	if err != nil {
		return err
	}
	next, err := s.store.AppendLog(r.Context(), f, off, data)
	if err != nil {
		return err
	}
	s.changed(store.ChangeLog(f.JobID))
	writeJSON(w, http.StatusOK, api.LogAppendResponse{NextOffset: next})
	return nil
}

func (s *Server) handleReadLog(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	q := r.URL.Query()
	var off int64
	if v := q.Get("offset"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return api.FieldErrors{{Field: "offset", Message: "must be a non-negative byte offset"}}
		}
		off = n
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	if _, err := s.visibleJob(r, id); err != nil {
		return err
	}
	api.SetDownloadHeaders(w.Header(), id+".log")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	ctx := r.Context()
	for {
		changed := s.hub.wait(store.ChangeLog(id))
		data, err := s.store.ReadLog(ctx, id, off, 256<<10)
		if err != nil {
			return nil // headers are out; the client sees a short body
		}
		if len(data) > 0 {
			if _, err := w.Write(data); err != nil {
				return nil
			}
			off += int64(len(data))
			if fl != nil && follow {
				fl.Flush()
			}
			continue
		}
		if !follow {
			return nil
		}
		j, err := s.store.Job(ctx, id)
		if err != nil {
			return nil
		}
		if api.Terminal(j.State) && off >= j.LogSize {
			return nil
		}
		if api.Terminal(j.State) {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case <-s.stopCtx.Done():
			return nil
		}
	}
}
