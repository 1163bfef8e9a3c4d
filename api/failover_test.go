package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cleanroom-ci/cleanroom/api"
)

// resetter accepts connections and closes them at once (a coordinator
// whose process died while its port still accepts, or a reset), counting
// them.
func resetter(t *testing.T) (url string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return "http://" + ln.Addr().String(), accepted
}

// refused is an address nothing listens on.
func refused(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// recorder is a coordinator stand-in that records what it was sent.
type recorder struct {
	srv   *httptest.Server
	mu    sync.Mutex
	paths []string
	keys  []string
	bytes int
	// status, if set, answers every request.
	status atomic.Int32
	// drop, if set, reads the request whole and drops the connection
	// without an answer (the coordinator died after acting on it).
	drop atomic.Bool
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.paths = append(r.paths, req.Method+" "+req.URL.Path)
		r.keys = append(r.keys, req.Header.Get(api.IdempotencyKeyHeader))
		r.bytes += len(body)
		r.mu.Unlock()
		if r.drop.Load() {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		if s := r.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(req.URL.Path, "/log"):
			io.WriteString(w, `{"next_offset": 3}`)
		case req.URL.Path == "/v1/jobs" && req.Method == http.MethodGet:
			io.WriteString(w, `[]`)
		default:
			io.WriteString(w, `{"id": "j-1"}`)
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) key(i int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[i]
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.paths...)
}

func TestClientFailsOverOnConnectionErrorsAndSticksToTheWorkingCoordinator(t *testing.T) {
	dead, accepted := resetter(t)
	live := newRecorder(t)
	cl := api.NewClient(refused(t)+","+dead+" , "+live.srv.URL+"/", "tok")
	ctx := context.Background()
	if _, err := cl.ListJobs(ctx, api.JobFilter{}); err != nil {
		t.Fatalf("listing through the third coordinator: %v", err)
	}
	if n := accepted.Load(); n == 0 {
		t.Fatal("the reset coordinator was never tried")
	}
	if cl.Current() != live.srv.URL {
		t.Fatalf("current %s, want the one that answered %s", cl.Current(), live.srv.URL)
	}
	before := accepted.Load()
	for range 3 {
		if _, err := cl.AppendLog(ctx, "j-1", 1, 0, []byte("abc")); err != nil {
			t.Fatal(err)
		}
	}
	if accepted.Load() != before {
		t.Fatal("later calls went back to the failed coordinator instead of sticking to the working one")
	}
	if got := len(live.got()); got != 4 {
		t.Fatalf("the working coordinator got %d requests, want 4", got)
	}
}

func TestClientFailsOverOnProxyErrorsButNotOnCoordinatorAnswers(t *testing.T) {
	for _, status := range []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout} {
		a, b := newRecorder(t), newRecorder(t)
		a.status.Store(int32(status))
		cl := api.NewClient(a.srv.URL+","+b.srv.URL, "tok")
		if err := cl.PostEgress(context.Background(), "j-1", 1, 0, []api.EgressEvent{{}}); err != nil {
			t.Fatalf("%d from the first: %v", status, err)
		}
		if len(a.got()) != 1 || len(b.got()) != 1 {
			t.Fatalf("%d: a got %v, b got %v; want one each", status, a.got(), b.got())
		}
	}
	a, b := newRecorder(t), newRecorder(t)
	a.status.Store(http.StatusConflict)
	cl := api.NewClient(a.srv.URL+","+b.srv.URL, "tok")
	if _, err := cl.Heartbeat(context.Background(), "j-1", api.HeartbeatRequest{Token: 1}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("409 from the first: %v, want the conflict", err)
	}
	if len(b.got()) != 0 {
		t.Fatal("a coordinator's own answer (409) was sent again to another one")
	}
	all := newRecorder(t)
	all.status.Store(http.StatusServiceUnavailable)
	cl = api.NewClient(all.srv.URL+","+all.srv.URL, "tok")
	if _, err := cl.GetJob(context.Background(), "j-1"); !api.Retryable(err) || api.StatusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("every coordinator 503: %v, want the retryable 503", err)
	}
}

func TestClientGivesUpWithErrUnreachableWhenNoCoordinatorAnswers(t *testing.T) {
	dead, _ := resetter(t)
	cl := api.NewClient(refused(t)+","+dead, "tok")
	if _, err := cl.GetJob(context.Background(), "j-1"); !errors.Is(err, api.ErrUnreachable) {
		t.Fatalf("no coordinator: %v, want ErrUnreachable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cl.GetJob(ctx, "j-1"); err == nil || errors.Is(err, api.ErrUnreachable) {
		t.Fatalf("canceled: %v, want the context's error, not ErrUnreachable", err)
	}
}

// A submit whose answer was lost is sent again with the same idempotency
// key, so the coordinator that gets it can find the job the first created.
func TestSubmitRetriesCarryTheSameIdempotencyKey(t *testing.T) {
	a, b := newRecorder(t), newRecorder(t)
	a.drop.Store(true)
	cl := api.NewClient(a.srv.URL+","+b.srv.URL, "tok")
	spec := api.JobSpec{Build: api.Build{Script: "npm test"}}
	if _, err := cl.SubmitGit(context.Background(), spec, api.Source{Kind: api.SourceGit}); err != nil {
		t.Fatal(err)
	}
	ka, kb := a.key(0), b.key(0)
	if ka == "" || ka != kb {
		t.Fatalf("keys %q then %q, want one non-empty key twice", ka, kb)
	}
	if _, err := cl.SubmitGit(context.Background(), spec, api.Source{Kind: api.SourceGit}); err != nil {
		t.Fatal(err)
	}
	if b.key(1) == kb {
		t.Fatal("a second submit reused the first one's key")
	}
}

// An upload read by the first coordinator is sent again whole to the next
// one when it can be rewound, and not at all when it cannot.
func TestUploadFailsOverOnlyWithARewindableSource(t *testing.T) {
	a, b := newRecorder(t), newRecorder(t)
	a.drop.Store(true)
	tarball := bytes.Repeat([]byte("x"), 100<<10)
	cl := api.NewClient(a.srv.URL+","+b.srv.URL, "tok")
	if _, err := cl.SubmitUpload(context.Background(), api.JobSpec{}, "00", bytes.NewReader(tarball)); err != nil {
		t.Fatalf("seekable source: %v", err)
	}
	b.mu.Lock()
	n := b.bytes
	b.mu.Unlock()
	if len(b.got()) != 1 || n < len(tarball) {
		t.Fatalf("the second coordinator got %v (%d bytes)", b.got(), n)
	}
	cl = api.NewClient(a.srv.URL+","+b.srv.URL, "tok")
	_, err := cl.SubmitUpload(context.Background(), api.JobSpec{}, "00", io.MultiReader(bytes.NewReader(tarball)))
	if !errors.Is(err, api.ErrUnreachable) || len(b.got()) != 1 {
		t.Fatalf("stream already read: %v (second coordinator got %v), want unreachable and nothing sent", err, b.got())
	}
}

// Register is not idempotent: it moves on when the request was never
// written, and not when the first coordinator may have acted on it.
func TestRegisterFailsOverOnlyWhenNothingWasSent(t *testing.T) {
	b := newRecorder(t)
	cl := api.NewClient(refused(t)+","+b.srv.URL, "")
	if _, err := cl.Register(context.Background(), api.RegisterRequest{Token: "t"}); err != nil {
		t.Fatalf("first refused: %v", err)
	}
	a := newRecorder(t)
	a.drop.Store(true)
	cl = api.NewClient(a.srv.URL+","+b.srv.URL, "")
	if _, err := cl.Register(context.Background(), api.RegisterRequest{Token: "t"}); !errors.Is(err, api.ErrUnreachable) {
		t.Fatalf("first dropped the answer: %v, want unreachable", err)
	}
	if n := len(b.got()); n != 1 {
		t.Fatalf("a register the first coordinator received was sent again (%d)", n)
	}
	a.drop.Store(false)
	a.status.Store(http.StatusBadGateway)
	cl = api.NewClient(a.srv.URL+","+b.srv.URL, "")
	if _, err := cl.CreateToken(context.Background(), api.TokenRequest{}); api.StatusOf(err) != http.StatusBadGateway || len(b.got()) != 1 {
		t.Fatalf("502 on create token: %v, want it returned, not sent again", err)
	}
}

func TestClientFailsOverOnATLSHandshakeFailure(t *testing.T) {
	bad := httptest.NewUnstartedServer(http.NotFoundHandler())
	bad.TLS = &tls.Config{MaxVersion: tls.VersionTLS12, MinVersion: tls.VersionTLS12}
	bad.StartTLS()
	defer bad.Close()
	good := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "[]") }))
	defer good.Close()
	cl := api.NewClient(bad.URL+","+good.URL, "tok")
	tr := good.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.MinVersion = tls.VersionTLS13 // the first refuses it
	cl.HTTP = &http.Client{Transport: tr}
	if _, err := cl.ListRunners(context.Background()); err != nil {
		t.Fatalf("after a failed handshake: %v", err)
	}
}

// lingering is a transport whose first attempt fails at once but goes on
// reading the request body afterwards, as http.RoundTripper may, while the
// second attempt (another coordinator) reads it: the second must still get
// the whole body, and the first must read none of it then.
type lingering struct {
	attempts  atomic.Int32
	secondGot chan []byte
	late      chan int // bytes the first attempt read after the second began
}

func (l *lingering) RoundTrip(req *http.Request) (*http.Response, error) {
	if l.attempts.Add(1) == 1 {
		buf := make([]byte, 10)
		io.ReadFull(req.Body, buf)
		started := make(chan struct{})
		go func() { // the transport's writer, still at it
			<-started
			n, _ := io.ReadFull(req.Body, make([]byte, 100))
			l.late <- n
		}()
		go func() { <-l.secondGot; close(started) }()
		return nil, errors.New("connection reset")
	}
	first := make([]byte, 1)
	io.ReadFull(req.Body, first)
	l.secondGot <- nil // let the first attempt's reader go on, now
	n := <-l.late
	rest, _ := io.ReadAll(req.Body)
	body := append(first, rest...)
	if n > 0 {
		return nil, fmt.Errorf("the first attempt read %d bytes after the second began", n)
	}
	return &http.Response{StatusCode: http.StatusCreated, Body: io.NopCloser(strings.NewReader(
		fmt.Sprintf(`{"name":"a","sha256":"%d"}`, len(body)))), Header: http.Header{}, Request: req}, nil
}

func TestAFailedAttemptStillReadingDoesNotStealTheNextOnesBody(t *testing.T) {
	l := &lingering{secondGot: make(chan []byte), late: make(chan int, 1)}
	cl := api.NewClient("http://a.invalid,http://b.invalid", "tok")
	cl.HTTP = &http.Client{Transport: l}
	data := bytes.Repeat([]byte("0123456789"), 100)
	a, err := cl.UploadArtifact(context.Background(), "j-1", 1, "a", api.KindFile, "", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if a.SHA256 != fmt.Sprint(len(data)) {
		t.Fatalf("the second coordinator got %s bytes, want %d", a.SHA256, len(data))
	}
}
