package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Several coordinators may share one store (docs/operations.md, "Several
// coordinators"): a Client whose BaseURL lists them, separated by commas,
// sends each request to the one that answered last and moves to the next
// one when a request fails before any coordinator answered it — a refused
// or reset connection, a TLS handshake failure, a timeout — or when a proxy
// in front answers 502, 503 or 504. It stays on the coordinator that
// answered (any answer, an error included: a 4xx is the coordinator
// speaking) until that one fails. A coordinator that failed is tried last
// for a while that doubles with each failure in a row (up to
// maxEndpointBackoff), so a dead one is not dialled first by every request;
// one call still tries every coordinator once before it gives up with an
// ErrUnreachable error, which the caller's own retry loop backs off on.
//
// A request is sent again to another coordinator only if that cannot do it
// twice: every call is idempotent (log chunks by offset, egress events by
// sequence number, results, heartbeats, cancels and deletes by nature, a
// submit by its Idempotency-Key, a claim because a claim whose answer is
// lost is released when the coordinator sees the connection gone, or by
// the lease reaper after the lease TTL if the coordinator died), except
// Register and CreateToken, which move on only when the request was not
// written at all (a refused connection, a failed handshake).

// IdempotencyKeyHeader carries a submit's idempotency key: a coordinator
// that already created a job for this key and token answers with that job
// (200) instead of creating another, so a submit may be repeated on
// another coordinator when the answer to the first one was lost.
const IdempotencyKeyHeader = "Idempotency-Key"

// CheckIdempotencyKey accepts 16 to 128 printable ASCII characters without
// spaces.
func CheckIdempotencyKey(k string) error {
	if len(k) < 16 || len(k) > 128 {
		return errors.New("must be 16 to 128 characters")
	}
	for _, c := range k {
		if c <= ' ' || c > '~' {
			return errors.New("must be printable ASCII without spaces")
		}
	}
	return nil
}

// NewIdempotencyKey returns a random key for one submit.
func NewIdempotencyKey() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}

// SplitURLs splits a comma-separated list of coordinator URLs, trimming
// spaces and trailing slashes and dropping empty entries.
func SplitURLs(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// maxEndpointBackoff caps how long a failed coordinator is tried last.
const maxEndpointBackoff = 30 * time.Second

// endpoints is the failover state of one Client's coordinators.
type endpoints struct {
	raw  string // the BaseURL they were parsed from
	now  func() time.Time
	mu   sync.Mutex
	urls []string
	cur  int
	// fails counts each coordinator's failures in a row; until is when it
	// stops being tried last.
	fails []int
	until []time.Time
}

func newEndpoints(raw string) *endpoints {
	urls := SplitURLs(raw)
	if len(urls) == 0 {
		urls = []string{""} // requests fail with the transport's error, as before
	}
	return &endpoints{raw: raw, now: time.Now, urls: urls, fails: make([]int, len(urls)), until: make([]time.Time, len(urls))}
}

// order is the sequence of coordinators one call tries: the current one,
// then the others in list order, those backed off last.
func (e *endpoints) order() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var fresh, backedOff []int
	for i := range e.urls {
		idx := (e.cur + i) % len(e.urls)
		if now.Before(e.until[idx]) {
			backedOff = append(backedOff, idx)
		} else {
			fresh = append(fresh, idx)
		}
	}
	return append(fresh, backedOff...)
}

// ok makes idx the coordinator the next calls go to.
func (e *endpoints) ok(idx int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cur, e.fails[idx], e.until[idx] = idx, 0, time.Time{}
}

// failed backs idx off and, if it was the current one, moves on.
func (e *endpoints) failed(idx int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fails[idx]++
	d := min(500*time.Millisecond<<min(e.fails[idx]-1, 10), maxEndpointBackoff)
	e.until[idx] = e.now().Add(d)
	if idx == e.cur {
		e.cur = (idx + 1) % len(e.urls)
	}
}

// Current returns the coordinator URL the next request goes to first.
func (c *Client) Current() string {
	ep := c.endpoints()
	return ep.urls[ep.order()[0]]
}

// endpoints returns the failover state for the current BaseURL.
func (c *Client) endpoints() *endpoints {
	c.epMu.Lock()
	defer c.epMu.Unlock()
	if c.ep == nil || c.ep.raw != c.BaseURL {
		c.ep = newEndpoints(c.BaseURL)
	}
	return c.ep
}

// proxyFailure reports whether status is what a load balancer or reverse
// proxy answers when the coordinator behind it is gone or overloaded.
func proxyFailure(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}
