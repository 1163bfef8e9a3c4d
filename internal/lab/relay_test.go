package lab

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// TestRelayModelsRTT: through the relay (in the registry namespace, in
// front of an echo server there), a client in the lab host namespace waits
// one RTT for setup plus one per exchange on a fresh connection, one RTT
// per exchange after that, and bulk data is not slowed beyond the delay.
func TestRelayModelsRTT(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	l, err := New(ctx, "relay")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var echo net.Listener
	if err := Do(l.RegistryNSPath(), func() (err error) { echo, err = net.Listen("tcp", "10.231.254.2:4873"); return }); err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	const rtt = 100 * time.Millisecond
	r, err := l.StartRelay(l.RegistryNS, "10.231.254.2:4875", "10.231.254.2:4873", rtt)
	if err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	t0 := time.Now()
	if err := Do(l.HostNSPath(), func() (err error) { c, err = net.Dial("tcp", "10.231.254.2:4875"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange := func(msg []byte) {
		t.Helper()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("relayed bytes differ")
		}
	}
	within := func(what string, d, lo, hi time.Duration) {
		t.Helper()
		if d < lo || d > hi {
			t.Errorf("%s took %v, want %v…%v", what, d, lo, hi)
		}
	}
	exchange([]byte("first\n"))
	within("connect + first exchange", time.Since(t0), 2*rtt, 2*rtt+rtt/2)
	t1 := time.Now()
	exchange([]byte("second\n"))
	within("second exchange", time.Since(t1), rtt, rtt+rtt/2)
	// 16 MiB echoed: one RTT plus the copying, not one RTT per chunk.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)
	t2 := time.Now()
	go func() { _, _ = c.Write(big) }()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	within("16 MiB echoed", time.Since(t2), rtt, 3*time.Second)
	if !bytes.Equal(got, big) {
		t.Fatal("relayed bulk bytes differ")
	}
	if n := r.Conns(); n != 1 {
		t.Errorf("relay counted %d connections, want 1", n)
	}
	// Closing the server side reaches the client as EOF.
	c.(*net.TCPConn).CloseWrite()
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after close: %v, want EOF", err)
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}
