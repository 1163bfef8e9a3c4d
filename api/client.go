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
	"net/url"
	"strconv"
	"strings"
	"time"
)

// LeaseHeader carries the fencing token on requests whose body is not JSON
// (log chunks, egress events, artifacts, source download).
const LeaseHeader = "X-Cleanroom-Lease"

// Client talks to a coordinator. One Client is safe for concurrent use.
type Client struct {
	// BaseURL is the coordinator's address, e.g. https://ci.example:7070.
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
}

// NewClient returns a client for baseURL with token.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token}
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("building request %s %s: %w", method, path, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// do sends req and returns the response when it is 2xx; otherwise it decodes
// the error body into *Error.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.http().Do(req)
	if err != nil {
		err = fmt.Errorf("calling %s %s: %w", req.Method, req.URL.Path, err)
		if req.Context().Err() == nil {
			err = WithClass(err, ErrUnreachable)
		}
		return nil, err
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	ae := &Error{Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, ae); err != nil || ae.Message == "" {
		ae.Message = strings.TrimSpace(string(b))
	}
	return nil, ae
}

// doJSON sends in (if non-nil) as JSON and decodes the answer into out (if
// non-nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding answer of %s %s: %w", method, path, err)
	}
	return nil
}

func leaseHeader(req *http.Request, token int64) {
	req.Header.Set(LeaseHeader, strconv.FormatInt(token, 10))
}

// --- Registration, tokens, runners ---------------------------------------

// Register exchanges a registration token (in req, not the client's Token)
// for a runner id and token.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (RegisterResponse, error) {
	var out RegisterResponse
	err := c.doJSON(ctx, http.MethodPost, "/v1/runners/register", nil, req, &out)
	return out, err
}

// CreateToken creates a registration or submit token (admin only).
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	var out TokenResponse
	err := c.doJSON(ctx, http.MethodPost, "/v1/tokens", nil, req, &out)
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

// SubmitGit submits a job whose source is a git URL and commit.
func (c *Client) SubmitGit(ctx context.Context, spec JobSpec, src Source) (Job, error) {
	var out Job
	err := c.doJSON(ctx, http.MethodPost, "/v1/jobs", nil, SubmitRequest{Spec: spec, Source: src}, &out)
	return out, err
}

// SubmitUpload submits a job with an uploaded tar.gz source, streamed from
// src as a multipart body (part "spec" then part "source"). sha256 is the
// hex digest of the tarball, checked by the coordinator.
func (c *Client) SubmitUpload(ctx context.Context, spec JobSpec, sha256 string, src io.Reader) (Job, error) {
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return Job{}, fmt.Errorf("encoding spec: %w", err)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
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
		}()
		pw.CloseWithError(err)
	}()
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/jobs", nil, pr)
	if err != nil {
		pr.Close()
		return Job{}, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.do(req)
	pr.Close()
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

// getTo streams the body of a GET to w; prepare, if set, adjusts the
// request (a lease header).
func (c *Client) getTo(ctx context.Context, path string, q url.Values, prepare func(*http.Request), w io.Writer, what string) (int64, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return 0, err
	}
	if prepare != nil {
		prepare(req)
	}
	resp, err := c.do(req)
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
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/log", q, bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	leaseHeader(req, token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(req)
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
	return c.getTo(ctx, "/v1/jobs/"+url.PathEscape(jobID)+"/source", nil, func(r *http.Request) { leaseHeader(r, token) }, w, "downloading source of "+jobID)
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
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/egress", q, &buf)
	if err != nil {
		return err
	}
	leaseHeader(req, token)
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := c.do(req)
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
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/egress", egressQuery(f), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
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
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/egress", q, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
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
// and refuses a mismatch.
func (c *Client) UploadArtifact(ctx context.Context, jobID string, token int64, name, kind, sha256 string, r io.Reader) (Artifact, error) {
	q := url.Values{"kind": {kind}, "sha256": {sha256}}
	req, err := c.newRequest(ctx, http.MethodPut, "/v1/jobs/"+url.PathEscape(jobID)+"/artifacts/"+url.PathEscape(name), q, r)
	if err != nil {
		return Artifact{}, err
	}
	leaseHeader(req, token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(req)
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
