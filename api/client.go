package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LeaseHeader carries the fencing token on requests whose body is not JSON
// (log chunks, egress events, artifacts, source download).
const LeaseHeader = "X-Cleanroom-Lease"

// Client talks to a coordinator, or to several that share one store (see
// IdempotencyKeyHeader and failover.go). One Client is safe for concurrent
// use.
type Client struct {
	// BaseURL is the coordinator's address, e.g. https://ci.example:7070,
	// or several separated by commas (coordinators sharing one store):
	// requests go to one and fail over to the next on connection errors.
	BaseURL string
	// Token is sent as a bearer token: the admin, submit or runner token.
	Token string
	// HTTP is the transport; nil means a client without a global timeout
	// (long-polls and log follows set their own deadlines via contexts).
	HTTP *http.Client
	// FollowIdle is how long FollowEgress waits for a line — an event or
	// the coordinator's heartbeat — before it gives the connection up as
	// dead (0: DefaultFollowIdle).
	FollowIdle time.Duration

	epMu sync.Mutex
	ep   *endpoints
}

// NewClient returns a client for baseURL (one URL, or several separated by
// commas) with token.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.Join(SplitURLs(baseURL), ","), Token: token}
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// call is one API request, built again for each coordinator it is sent to.
type call struct {
	method, path string
	query        url.Values
	// body returns the body of one attempt (nil: none). An error ends the
	// call: the body cannot be sent again.
	body        func() (io.Reader, error)
	contentType string
	// header, if set, adjusts each attempt (a lease, an idempotency key).
	header func(http.Header)
	// once marks a request that must not reach two coordinators (it is not
	// idempotent): it moves on only when nothing of it was written.
	once bool
}

// jsonBody encodes in as the body of every attempt (nil: no body).
func jsonBody(in any) (func() (io.Reader, error), error) {
	if in == nil {
		return nil, nil
	}
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	return bytesBody(b), nil
}

func bytesBody(b []byte) func() (io.Reader, error) {
	return func() (io.Reader, error) { return bytes.NewReader(b), nil }
}

// errNoReplay: a streamed body was (partly) sent and cannot be read again.
var errNoReplay = errors.New("the request body cannot be sent again")

// replayable returns a body func for a streamed r: the first attempt reads
// r; a later one reads it again from where it started if r is an
// io.Seeker, or if the attempts before read nothing of it. The transport
// never closes r.
//
// An attempt that failed may still be read: http.RoundTripper may go on
// reading a request's body in its own goroutine after RoundTrip returned.
// So a later attempt first ends the one before (waiting for a Read in
// progress, after which it reads nothing more) and only then rewinds r:
// two attempts never read r at once, and a rewound r is read by one.
func replayable(r io.Reader) func() (io.Reader, error) {
	start := int64(-1)
	if sk, ok := r.(io.Seeker); ok {
		if off, err := sk.Seek(0, io.SeekCurrent); err == nil {
			start = off
		}
	}
	var last *attemptReader
	return func() (io.Reader, error) {
		if last != nil && last.end() > 0 {
			if start < 0 {
				return nil, errNoReplay
			}
			if _, err := r.(io.Seeker).Seek(start, io.SeekStart); err != nil {
				return nil, fmt.Errorf("rewinding the request body: %w", err)
			}
		}
		last = &attemptReader{r: r}
		return last, nil
	}
}

// errAttemptEnded is what an attempt's body reads after a later attempt
// took the source over.
var errAttemptEnded = errors.New("the request body was taken over by another attempt")

// attemptReader is one attempt's view of a replayable body: it counts what
// the transport read (from the transport's goroutine) and reads nothing
// once ended.
type attemptReader struct {
	mu    sync.Mutex
	r     io.Reader
	n     int64
	ended bool
}

func (a *attemptReader) Read(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return 0, errAttemptEnded
	}
	n, err := a.r.Read(p)
	a.n += int64(n)
	return n, err
}

// end stops the attempt's reads, once its Read in progress (if any)
// returned, and says how much of the source it read.
func (a *attemptReader) end() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ended = true
	return a.n
}

// send sends cl to the current coordinator and fails over to the others
// (failover.go). It returns the response when it is 2xx; otherwise it
// decodes the error body into *Error. A call that reached no coordinator
// fails with an ErrUnreachable error (unless ctx ended).
func (c *Client) send(ctx context.Context, cl call) (*http.Response, error) {
	ep := c.endpoints()
	var lastErr error
	for _, idx := range ep.order() {
		var body io.Reader
		if cl.body != nil {
			b, err := cl.body()
			if err != nil {
				if lastErr != nil {
					return nil, lastErr
				}
				return nil, err
			}
			body = b
		}
		u := ep.urls[idx] + cl.path
		if len(cl.query) > 0 {
			u += "?" + cl.query.Encode()
		}
		var wrote atomic.Bool
		tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { wrote.Store(true) }})
		req, err := http.NewRequestWithContext(tctx, cl.method, u, body)
		if err != nil {
			return nil, fmt.Errorf("building request %s %s: %w", cl.method, cl.path, err)
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		if cl.contentType != "" {
			req.Header.Set("Content-Type", cl.contentType)
		}
		if cl.header != nil {
			cl.header(req.Header)
		}
		resp, err := c.http().Do(req)
		if err != nil {
			err = fmt.Errorf("calling %s %s: %w", req.Method, req.URL.Path, err)
			if ctx.Err() != nil {
				return nil, err
			}
			lastErr = WithClass(err, ErrUnreachable)
			ep.failed(idx)
			if cl.once && wrote.Load() {
				return nil, lastErr
			}
			continue
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			ep.ok(idx)
			return resp, nil
		}
		ae := readError(resp)
		if !proxyFailure(resp.StatusCode) {
			ep.ok(idx)
			return nil, ae
		}
		lastErr = ae
		ep.failed(idx)
		if cl.once {
			return nil, ae
		}
	}
	return nil, lastErr
}

// readError decodes a non-2xx answer into *Error and closes its body.
func readError(resp *http.Response) *Error {
	defer resp.Body.Close()
	ae := &Error{Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, ae); err != nil || ae.Message == "" {
		ae.Message = strings.TrimSpace(string(b))
	}
	return ae
}

// doJSON sends in (if non-nil) as JSON and decodes the answer into out (if
// non-nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	return c.callJSON(ctx, call{method: method, path: path, query: q}, in, out)
}

// callJSON is doJSON for a call with more settings (once, headers).
func (c *Client) callJSON(ctx context.Context, cl call, in, out any) error {
	body, err := jsonBody(in)
	if err != nil {
		return err
	}
	cl.body = body
	if in != nil {
		cl.contentType = "application/json"
	}
	resp, err := c.send(ctx, cl)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding answer of %s %s: %w", cl.method, cl.path, err)
	}
	return nil
}

func withLease(token int64) func(http.Header) {
	return func(h http.Header) { h.Set(LeaseHeader, strconv.FormatInt(token, 10)) }
}

// --- Registration, tokens, runners ---------------------------------------

// Register exchanges a registration token (in req, not the client's Token)
// for a runner id and token.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (RegisterResponse, error) {
	var out RegisterResponse
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/runners/register", once: true}, req, &out)
	return out, err
}

// CreateToken creates a registration or submit token (admin only).
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	var out TokenResponse
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/tokens", once: true}, req, &out)
	return out, err
}

// ListTokens lists registration, submit and audit tokens, revoked and
// expired ones included (admin only).
func (c *Client) ListTokens(ctx context.Context) ([]TokenInfo, error) {
	var out []TokenInfo
	err := c.doJSON(ctx, http.MethodGet, "/v1/tokens", nil, nil, &out)
	return out, err
}

// RevokeToken revokes a token by id: every later call with it gets 401
// (admin only). Revoking twice is not an error.
func (c *Client) RevokeToken(ctx context.Context, id string) (TokenInfo, error) {
	var out TokenInfo
	err := c.doJSON(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// ListRunners lists registered runners, revoked ones included (admin only).
func (c *Client) ListRunners(ctx context.Context) ([]Runner, error) {
	var out []Runner
	err := c.doJSON(ctx, http.MethodGet, "/v1/runners", nil, nil, &out)
	return out, err
}

// RemoveRunner revokes a runner by id or name (admin only); its token stops
// working at once and its running jobs are re-queued.
func (c *Client) RemoveRunner(ctx context.Context, idOrName string) (Runner, error) {
	var out Runner
	err := c.doJSON(ctx, http.MethodDelete, "/v1/runners/"+url.PathEscape(idOrName), nil, nil, &out)
	return out, err
}

// RunnerKey fetches a runner's public signing key (no token needed).
func (c *Client) RunnerKey(ctx context.Context, runnerID string) (RunnerKey, error) {
	var out RunnerKey
	err := c.doJSON(ctx, http.MethodGet, "/v1/runners/"+url.PathEscape(runnerID)+"/key", nil, nil, &out)
	return out, err
}

// --- Jobs --------------------------------------------------------------------

// SubmitGit submits a job whose source is a git URL and commit. It sends
// a fresh idempotency key, so the submit may be sent again (to another
// coordinator) and still create one job.
func (c *Client) SubmitGit(ctx context.Context, spec JobSpec, src Source) (Job, error) {
	var out Job
	key := NewIdempotencyKey()
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/jobs", header: func(h http.Header) { h.Set(IdempotencyKeyHeader, key) }},
		SubmitRequest{Spec: spec, Source: src}, &out)
	return out, err
}

// SubmitUpload submits a job with an uploaded tar.gz source, streamed from
// src as a multipart body (part "spec" then part "source"). sha256 is the
// hex digest of the tarball, checked by the coordinator. Like SubmitGit it
// sends an idempotency key; it fails over to another coordinator after
// src was (partly) read only if src is an io.Seeker.
func (c *Client) SubmitUpload(ctx context.Context, spec JobSpec, sha256 string, src io.Reader) (Job, error) {
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return Job{}, fmt.Errorf("encoding spec: %w", err)
	}
	source := replayable(src)
	boundary := multipart.NewWriter(io.Discard).Boundary()
	key := NewIdempotencyKey()
	body := func() (io.Reader, error) {
		r, err := source()
		if err != nil {
			return nil, err
		}
		pr, pw := io.Pipe()
		go func() {
			mw := multipart.NewWriter(pw)
			_ = mw.SetBoundary(boundary)
			pw.CloseWithError(writeUpload(mw, specJSON, sha256, r))
		}()
		return pr, nil
	}
	resp, err := c.send(ctx, call{method: http.MethodPost, path: "/v1/jobs", body: body,
		contentType: "multipart/form-data; boundary=" + boundary,
		header:      func(h http.Header) { h.Set(IdempotencyKeyHeader, key) }})
	if err != nil {
		return Job{}, err
	}
	defer resp.Body.Close()
	var out Job
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return Job{}, fmt.Errorf("decoding submitted job: %w", err)
	}
	return out, nil
}

// writeUpload writes the parts of an upload submit to mw.
func writeUpload(mw *multipart.Writer, specJSON []byte, sha256 string, src io.Reader) error {
	if err := mw.WriteField("spec", string(specJSON)); err != nil {
		return err
	}
	if err := mw.WriteField("sha256", sha256); err != nil {
		return err
	}
	part, err := mw.CreateFormFile("source", "source.tar.gz")
	if err != nil {
		return err
	}
	if _, err := io.Copy(part, src); err != nil {
		return err
	}
	return mw.Close()
}

// Policy returns what the online runners enforce (GET /v1/policy).
func (c *Client) Policy(ctx context.Context) (Policy, error) {
	var out Policy
	err := c.doJSON(ctx, http.MethodGet, "/v1/policy", nil, nil, &out)
	return out, err
}

// GetJob returns one job.
func (c *Client) GetJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// JobFilter selects jobs for ListJobs; zero fields match all.
type JobFilter struct {
	State string
	Limit int
}

// ListJobs lists jobs, newest first.
func (c *Client) ListJobs(ctx context.Context, f JobFilter) ([]Job, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out []Job
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs", q, nil, &out)
	return out, err
}

// CancelJob asks for a job to stop: a queued job is canceled at once, a
// running one at its agent's next heartbeat answer.
func (c *Client) CancelJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/cancel", nil, nil, &out)
	return out, err
}

// ReadLog copies a job's log from offset to w and returns the number of bytes
// copied. With follow it streams until the job ends.
func (c *Client) ReadLog(ctx context.Context, id string, offset int64, follow bool, w io.Writer) (int64, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	return c.getTo(ctx, "/v1/jobs/"+url.PathEscape(id)+"/log", q, nil, w, "reading log of "+id)
}

// getTo streams the body of a GET to w; header, if set, adjusts the
// request (a lease header).
func (c *Client) getTo(ctx context.Context, path string, q url.Values, header func(http.Header), w io.Writer, what string) (int64, error) {
	resp, err := c.send(ctx, call{method: http.MethodGet, path: path, query: q, header: header})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("%s: %w", what, err)
	}
	return n, nil
}

// --- Runner side: claim, lease, log, events, artifacts, result -------------

// Claim long-polls for up to req.Slots jobs. The HTTP request outlives
// req.Wait by a margin, so set no shorter client timeout.
func (c *Client) Claim(ctx context.Context, req ClaimRequest) (ClaimResponse, error) {
	var out ClaimResponse
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs/claim", nil, req, &out)
	return out, err
}

// Heartbeat renews a lease and learns whether the job was canceled.
func (c *Client) Heartbeat(ctx context.Context, jobID string, req HeartbeatRequest) (HeartbeatResponse, error) {
	var out HeartbeatResponse
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/heartbeat", nil, req, &out)
	return out, err
}

// AppendLog sends log bytes starting at offset and returns the next offset
// the coordinator expects. Sending a chunk again is harmless.
func (c *Client) AppendLog(ctx context.Context, jobID string, token, offset int64, data []byte) (int64, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	resp, err := c.send(ctx, call{method: http.MethodPost, path: "/v1/jobs/" + url.PathEscape(jobID) + "/log", query: q,
		body: bytesBody(data), contentType: "application/octet-stream", header: withLease(token)})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out LogAppendResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, fmt.Errorf("decoding log answer: %w", err)
	}
	return out.NextOffset, nil
}

// DownloadSource copies an uploaded job source (tar.gz) to w. Only the runner
// holding the lease may fetch it.
func (c *Client) DownloadSource(ctx context.Context, jobID string, token int64, w io.Writer) (int64, error) {
	return c.getTo(ctx, "/v1/jobs/"+url.PathEscape(jobID)+"/source", nil, withLease(token), w, "downloading source of "+jobID)
}

// PostEgress stores events for a job. firstSeq is the job-wide sequence
// number of events[0]; a retried batch with the same numbers is stored once.
func (c *Client) PostEgress(ctx context.Context, jobID string, token, firstSeq int64, events []EgressEvent) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range events {
		if err := enc.Encode(e); err != nil {
			return fmt.Errorf("encoding egress event: %w", err)
		}
	}
	q := url.Values{"seq": {strconv.FormatInt(firstSeq, 10)}}
	resp, err := c.send(ctx, call{method: http.MethodPost, path: "/v1/jobs/" + url.PathEscape(jobID) + "/egress", query: q,
		body: bytesBody(buf.Bytes()), contentType: "application/x-ndjson", header: withLease(token)})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// QueryEgress streams matching events to fn, oldest first (in cursor
// order when f.After is set).
func (c *Client) QueryEgress(ctx context.Context, f EgressFilter, fn func(EgressEvent) error) error {
	return c.QueryEgressRecords(ctx, f, func(r EgressRecord) error { return fn(r.EgressEvent) })
}

// QueryEgressRecords streams matching events with their cursors to fn:
// oldest first, or in cursor order after f.After when it is set.
func (c *Client) QueryEgressRecords(ctx context.Context, f EgressFilter, fn func(EgressRecord) error) error {
	resp, err := c.send(ctx, call{method: http.MethodGet, path: "/v1/egress", query: egressQuery(f)})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readRecords(resp.Body, func() {}, fn)
}

// DefaultFollowIdle is how long FollowEgress waits for a line when
// Client.FollowIdle is zero: four of the coordinator's default heartbeats.
const DefaultFollowIdle = time.Minute

// FollowEgress streams the events after f.After (after cursor 0, i.e. all,
// when it is nil) in cursor order, and then each matching event as the
// coordinator stores it. It returns nil when the coordinator ends the
// stream (it stops, or f.Limit events were sent), fn's error, or an error
// when the connection breaks or stays silent — no event and no heartbeat —
// for Client.FollowIdle. To resume without a gap or a duplicate, call it
// again with After set to the last cursor fn was given.
func (c *Client) FollowEgress(ctx context.Context, f EgressFilter, fn func(EgressRecord) error) error {
	idle := c.FollowIdle
	if idle <= 0 {
		idle = DefaultFollowIdle
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errIdle := fmt.Errorf("following egress events: nothing received for %s", idle)
	timer := time.AfterFunc(idle, func() { cancel(errIdle) })
	defer timer.Stop()
	q := egressQuery(f)
	if f.After == nil {
		q.Set("after", "0")
	}
	q.Set("follow", "1")
	resp, err := c.send(ctx, call{method: http.MethodGet, path: "/v1/egress", query: q})
	if err == nil {
		defer resp.Body.Close()
		err = readRecords(resp.Body, func() { timer.Reset(idle) }, func(r EgressRecord) error {
			timer.Stop() // a slow fn is not a silent connection
			defer timer.Reset(idle)
			return fn(r)
		})
	}
	if errors.Is(context.Cause(ctx), errIdle) {
		return errIdle
	}
	return err
}

// egressQuery encodes f as the query of GET /v1/egress.
func egressQuery(f EgressFilter) url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"job": f.Job, "runner": f.Runner, "verdict": f.Verdict} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		q.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.After != nil {
		q.Set("after", strconv.FormatInt(*f.After, 10))
	}
	return q
}

// readRecords decodes the JSON lines of body into fn, calling seen for
// every line (empty lines are heartbeats). Only complete lines count: a
// line cut off by a broken connection is an error, never a record.
func readRecords(body io.Reader, seen func(), fn func(EgressRecord) error) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return 0, nil, io.ErrUnexpectedEOF
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		seen()
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r EgressRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("decoding egress event: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading egress events: %w", err)
	}
	return nil
}

// UploadArtifact stores one artifact file; the coordinator recomputes sha256
// and refuses a mismatch. It fails over to another coordinator after r was
// (partly) read only if r is an io.Seeker.
func (c *Client) UploadArtifact(ctx context.Context, jobID string, token int64, name, kind, sha256 string, r io.Reader) (Artifact, error) {
	q := url.Values{"kind": {kind}, "sha256": {sha256}}
	resp, err := c.send(ctx, call{method: http.MethodPut, path: "/v1/jobs/" + url.PathEscape(jobID) + "/artifacts/" + url.PathEscape(name), query: q,
		body: replayable(r), contentType: "application/octet-stream", header: withLease(token)})
	if err != nil {
		return Artifact{}, err
	}
	defer resp.Body.Close()
	var out Artifact
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return Artifact{}, fmt.Errorf("decoding artifact answer: %w", err)
	}
	return out, nil
}

// ListArtifacts lists a job's artifacts.
func (c *Client) ListArtifacts(ctx context.Context, jobID string) ([]Artifact, error) {
	var out []Artifact
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(jobID)+"/artifacts", nil, nil, &out)
	return out, err
}

// DownloadArtifact copies one artifact to w.
func (c *Client) DownloadArtifact(ctx context.Context, jobID, name string, w io.Writer) (int64, error) {
	return c.getTo(ctx, "/v1/jobs/"+url.PathEscape(jobID)+"/artifacts/"+url.PathEscape(name), nil, nil, w, "downloading artifact "+name)
}

// Result ends a job. Repeating the same result is accepted.
func (c *Client) Result(ctx context.Context, jobID string, req ResultRequest) error {
	return c.doJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/result", nil, req, nil)
}

// ExpectedOffset extracts the offset a 409 log answer asked for.
func ExpectedOffset(err error) (int64, bool) {
	var ae *Error
	if errors.As(err, &ae) && ae.ExpectedOffset != nil {
		return *ae.ExpectedOffset, true
	}
	return 0, false
}
