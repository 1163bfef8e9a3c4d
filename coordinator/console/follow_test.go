package console

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// streamingBackend has one running job whose log never stops growing, and a
// token that can be revoked.
type streamingBackend struct {
	fakeBackend
	revoked atomic.Bool
}

func (b *streamingBackend) Authenticate(ctx context.Context, token string) (Principal, error) {
	if b.revoked.Load() {
		return Principal{}, api.ErrUnauthorized
	}
	return b.fakeBackend.Authenticate(ctx, token)
}

func (b *streamingBackend) Job(_ context.Context, _ Principal, id string) (store.Job, error) {
	return store.Job{Job: api.Job{ID: id, State: api.StateRunning}}, nil
}

func (b *streamingBackend) ReadLog(context.Context, Principal, string, int64, int) ([]byte, error) {
	time.Sleep(time.Millisecond)
	return []byte("still building\n"), nil
}

// A revoked token's open log stream ends soon, even while the log keeps
// coming (the idle ping is never reached).
func TestLogStreamEndsWhenTheTokenIsRevoked(t *testing.T) {
	old := followPing
	followPing = 50 * time.Millisecond
	defer func() { followPing = old }()
	b := &streamingBackend{fakeBackend: fakeBackend{done: make(chan struct{})}}
	srv := httptest.NewServer(New(b, Options{}))
	defer srv.Close()
	ck := signIn(t, srv, "cra_good").Cookies()[0]
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/jobs/j-1/log/events?offset=0", nil)
	req.AddCookie(ck)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	buf := make([]byte, 4096)
	if _, err := io.ReadAtLeast(resp.Body, buf, 100); err != nil {
		t.Fatal(err)
	}
	b.revoked.Store(true)
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream went on after its token was revoked")
	}
}
