package lab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A Relay is a TCP relay inside a lab namespace that models network latency
// between its clients and a server in the same namespace (the lab's links
// have none, and the kernel may lack sch_netem). For benchmarks: a registry
// in another region, or one proxying the public registry, is tens of
// milliseconds away, which is what a cache next to the sandbox saves.
//
// Model, for a round-trip time RTT: a connection's setup costs one RTT
// (nothing a client sends is delivered before RTT has passed since it
// connected: the SYN / SYN-ACK exchange), and every chunk read from either
// side is delivered to the other RTT/2 after it was read (a delay line per
// direction; throughput is not limited and there is no slow start, so the
// model understates a real link's cost for a cold download). A request
// sent on a fresh connection is answered 2×RTT after connect, on a reused
// one RTT after it was sent.
type Relay struct {
	ln     net.Listener
	ns     string
	target string
	rtt    time.Duration
	conns  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]bool
	closed bool
}

// relayChunk is one read, due for delivery at due.
type relayChunk struct {
	b   []byte
	due time.Time
}

// StartRelay listens on listen inside the lab namespace ns (a name) and
// relays each connection to target, dialled from inside ns too, with the
// delays of a link of round-trip time rtt. Both ends are in the lab: the
// relay never opens a socket outside it. The lab closes it; Close stops it
// earlier.
func (l *Lab) StartRelay(ns, listen, target string, rtt time.Duration) (*Relay, error) {
	r := &Relay{ns: NSPath(ns), target: target, rtt: rtt, open: map[net.Conn]bool{}}
	err := Do(r.ns, func() (err error) { r.ln, err = net.Listen("tcp", listen); return })
	if err != nil {
		return nil, fmt.Errorf("relay: listening on %s in %s: %w", listen, ns, err)
	}
	l.mu.Lock()
	l.closers = append([]func() error{r.Close}, l.closers...)
	l.mu.Unlock()
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is the address the relay listens on.
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// Conns is how many connections the relay has accepted.
func (r *Relay) Conns() int64 { return r.conns.Load() }

// Close stops accepting, closes every relayed connection and waits for the
// relay's goroutines. Idempotent.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	err := r.ln.Close()
	for c := range r.open {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

// track registers c to be closed by Close; false if the relay is closed.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.open[c] = true
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.open, c)
	r.mu.Unlock()
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		r.conns.Add(1)
		r.wg.Add(1)
		go r.relay(c, time.Now())
	}
}

// relay forwards one connection accepted at t0.
func (r *Relay) relay(c net.Conn, t0 time.Time) {
	defer r.wg.Done()
	defer c.Close()
	if !r.track(c) {
		return
	}
	defer r.untrack(c)
	var up net.Conn
	// Dialled inside the namespace: the socket is created there.
	err := Do(r.ns, func() (err error) { up, err = net.DialTimeout("tcp", r.target, 10*time.Second); return })
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pipe(up, c, t0.Add(r.rtt)) }()
	go func() { defer wg.Done(); r.pipe(c, up, time.Time{}) }()
	wg.Wait()
}

// pipe copies src to dst through a delay line: each chunk is written RTT/2
// after it was read, or after notBefore if that is later. At src's EOF
// (once everything read is delivered) dst's write side is closed; on any
// error both are.
func (r *Relay) pipe(dst, src net.Conn, notBefore time.Time) {
	// Enough queued chunks that the line never limits throughput here:
	// 1024 × 64 KiB per half RTT.
	line := make(chan relayChunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range line {
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.b); err != nil {
				src.Close()
				dst.Close()
				for range line { // drain, so the reader never blocks
				}
				return
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	for {
		b := make([]byte, 64<<10)
		n, err := src.Read(b)
		if n > 0 {
			at := time.Now()
			if at.Before(notBefore) {
				at = notBefore
			}
			line <- relayChunk{b: b[:n], due: at.Add(r.rtt / 2)}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			break
		}
	}
	close(line)
	<-done
}
