package integration

// This file sorts before e2e_test.go on purpose: go test runs files in name
// order, and TestNoResidueAfterAllScenarios there must run last.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The harness's relay makes the coordinator, on the lab host namespace's
// loopback, reachable on the root namespace's 127.0.0.1 only; stopping it
// closes the connections it relays (a browser's keep-alive included) and
// the listener, and stopping twice is harmless.
func TestForwardRelaysToTheCoordinatorAndStops(t *testing.T) {
	e := env(t)
	base, stop, err := e.Forward()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	addr := strings.TrimPrefix(base, "http://")
	if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
		t.Fatalf("the relay listens on %s, want 127.0.0.1 only", addr)
	}
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz through the relay: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /readyz through the relay: %d", resp.StatusCode)
	}

	// A kept-alive connection, open when the relay stops.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	br := bufio.NewReader(c)
	r, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading /healthz on a kept-alive connection: %v", err)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	r.Body.Close()

	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stopping the relay hangs with a connection open")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("the kept-alive connection is still open after stop (%v)", err)
	}
	if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c2.Close()
		t.Errorf("the relay still accepts connections after stop")
	}
	stop()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
