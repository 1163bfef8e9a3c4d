package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

func TestAdapterAnswersEachErrorClassWithItsStatusAndBody(t *testing.T) {
	const refused = "unauthorized: missing, invalid, expired or revoked token"
	tooLarge := func() error {
		r := httptest.NewRequest("POST", "/", strings.NewReader("0123456789"))
		_, err := readBody(httptest.NewRecorder(), r, 4)
		return err
	}()
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantMsg    string
		wantFields []string
		wantOffset int64 // -1: none
		wantLog    string
	}{
		{"field errors", api.FieldErrors{{Field: "name", Message: "required"}, {Field: "uses", Message: "must not be negative"}},
			400, "invalid request", []string{"name", "uses"}, -1, ""},
		{"wrapped field errors", fmt.Errorf("decoding: %w", api.FieldErrors{{Field: "spec.timout", Message: "unknown field"}}),
			400, "invalid request", []string{"spec.timout"}, -1, ""},
		{"digest mismatch", fmt.Errorf("receiving blob: %w", store.ErrDigestMismatch), 400, "receiving blob: sha256 mismatch", nil, -1, ""},
		{"store not found", fmt.Errorf("looking up job j-1: %w", store.ErrNotFound), 404, "looking up job j-1: not found", nil, -1, ""},
		{"stale lease", fmt.Errorf("heartbeat: %w", store.ErrStaleLease), 409, "heartbeat: stale lease", nil, -1, ""},
		{"state conflict", fmt.Errorf("registering runner: %w", store.ErrConflict), 409, "registering runner: conflict", nil, -1, ""},
		{"log gap", fmt.Errorf("appending log: %w", &store.OffsetError{Expected: 116}), 409,
			"appending log: log offset gap: expected offset 116", nil, 116, ""},
		{"invalid token", fmt.Errorf("checking token: %w", store.ErrTokenInvalid), 401, refused, nil, -1, "request refused"},
		{"no token", fmt.Errorf("reading bearer token: %w", api.ErrUnauthorized), 401, refused, nil, -1, "request refused"},
		{"forbidden", fmt.Errorf("a submit token may not call GET /v1/runners: %w", api.ErrForbidden), 403,
			"a submit token may not call GET /v1/runners: forbidden", nil, -1, ""},
		{"body too large", tooLarge, 413, "http: request body too large", nil, -1, ""},
		{"failure of no class", errors.New("disk on fire"), 500, "internal error", nil, -1, "request failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			s := &Server{log: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})}
			rec := httptest.NewRecorder()
			s.adapt(func(http.ResponseWriter, *http.Request) error { return tc.err })(rec, httptest.NewRequest("GET", "/v1/x", nil))
			if rec.Code != tc.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tc.wantStatus)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var body api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if body.Message != tc.wantMsg {
				t.Errorf("message = %q, want %q", body.Message, tc.wantMsg)
			}
			var fields []string
			for _, f := range body.Fields {
				fields = append(fields, f.Field)
			}
			if strings.Join(fields, ",") != strings.Join(tc.wantFields, ",") {
				t.Errorf("fields = %v, want %v", fields, tc.wantFields)
			}
			switch {
			case tc.wantOffset < 0 && body.ExpectedOffset != nil:
				t.Errorf("expected_offset = %d, want none", *body.ExpectedOffset)
			case tc.wantOffset >= 0 && (body.ExpectedOffset == nil || *body.ExpectedOffset != tc.wantOffset):
				t.Errorf("expected_offset = %v, want %d", body.ExpectedOffset, tc.wantOffset)
			}
			if tc.wantLog == "" && logs.Len() > 0 || !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log = %q, want %q", logs.String(), tc.wantLog)
			}
			if tc.wantStatus == 500 && !strings.Contains(logs.String(), "disk on fire") {
				t.Errorf("the internal error is not logged: %q", logs.String())
			}
		})
	}
}

func TestAdapterWritesNothingMore(t *testing.T) {
	s := &Server{log: hclog.NewNullLogger()}
	t.Run("after a handler that answered", func(t *testing.T) {
		rec := httptest.NewRecorder()
		s.adapt(func(w http.ResponseWriter, r *http.Request) error {
			writeJSON(w, http.StatusCreated, map[string]string{"id": "j-1"})
			return nil
		})(rec, httptest.NewRequest("POST", "/v1/jobs", nil))
		if rec.Code != http.StatusCreated || strings.TrimSpace(rec.Body.String()) != `{"id":"j-1"}` {
			t.Fatalf("got %d %q", rec.Code, rec.Body)
		}
	})
	t.Run("for an internal error once the client is gone", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		rec := httptest.NewRecorder()
		s.adapt(func(http.ResponseWriter, *http.Request) error { return context.Canceled })(rec, httptest.NewRequest("GET", "/v1/jobs", nil).WithContext(ctx))
		if rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "" {
			t.Fatalf("answered a gone client: %d %q", rec.Code, rec.Body)
		}
	})
}

func TestDecodeJSONIsStrict(t *testing.T) {
	type req struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}
	tests := []struct {
		name      string
		body      string
		wantField string // "": accepted
		wantClass error
	}{
		{"one value", `{"name":"r"}`, "", nil},
		{"trailing white space", "{\"name\":\"r\"}\n\t ", "", nil},
		{"unknown field", `{"name":"r","nmae":"x"}`, "nmae", api.ErrInvalid},
		{"wrong type", `{"labels":["a"]}`, "labels", api.ErrInvalid},
		{"empty body", ``, "body", api.ErrInvalid},
		{"second value", `{"name":"r"}{"name":"s"}`, "body", api.ErrInvalid},
		{"trailing garbage", `{"name":"r"} x`, "body", api.ErrInvalid},
		{"over the limit", `{"name":"` + strings.Repeat("r", 100) + `"}`, "", api.ErrTooLarge},
		{"trailing data over the limit", `{"name":"r"}` + strings.Repeat(" ", 60) + "x", "", api.ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v req
			r := httptest.NewRequest("POST", "/", strings.NewReader(tc.body))
			err := decodeJSON(httptest.NewRecorder(), r, 64, &v)
			if tc.wantClass == nil {
				if err != nil || v.Name != "r" {
					t.Fatalf("got %+v, %v", v, err)
				}
				return
			}
			if !errors.Is(err, tc.wantClass) {
				t.Fatalf("got %v, want %v", err, tc.wantClass)
			}
			var fe api.FieldErrors
			if tc.wantField != "" && (!errors.As(err, &fe) || fe[0].Field != tc.wantField) {
				t.Fatalf("got %v, want a field error for %s", err, tc.wantField)
			}
		})
	}
}
