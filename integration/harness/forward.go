package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

// Forward makes the coordinators, which listen on the lab host namespace's
// own loopback (e.URLs), reachable from the root namespace's loopback: each
// connection to the returned base URL (http://127.0.0.1:PORT) is relayed
// to a connection opened inside the lab host namespace, to the first
// coordinator that accepts one, in the agents' order (e.AgentURLs; as a
// load balancer would skip a dead one): the coordinator whose /metrics
// counts the agents' claims and egress events, which are counters of
// each process. A browser or a scraper on this machine can then use the
// console and /metrics; nothing listens beyond 127.0.0.1 and no packet
// leaves loopback.
//
// stop closes the listener and every relayed connection and waits for the
// relay's goroutines; it is idempotent, and Close calls it for every relay
// still open, so a relay never outlives its environment.
func (e *Env) Forward() (baseURL string, stop func(), err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return "", nil, errors.New("harness: forwarding the coordinator: the environment is closed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("forwarding the coordinator: %w", err)
	}
	var addrs []string
	for _, u := range e.AgentURLs {
		addrs = append(addrs, strings.TrimPrefix(u, "http://"))
	}
	r := &relay{ln: ln, nsPath: e.Lab.HostNSPath(), addrs: addrs, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	var once sync.Once
	stop = func() { once.Do(r.stop) }
	e.stops = append(e.stops, stop)
	return "http://" + ln.Addr().String(), stop, nil
}

// relay is one Forward: a root-namespace listener and the connection pairs
// it relays into the lab host namespace.
type relay struct {
	ln     net.Listener
	nsPath string
	addrs  []string // the coordinators, in the order tried
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// track keeps the pair to close at stop, or closes it and reports false if
// the relay has stopped.
func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

// untrack closes a finished pair and forgets it (a console kept open for
// hours makes many connections).
func (r *relay) untrack(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(r.conns, c)
	}
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return
		}
		var up net.Conn
		err = lab.Do(r.nsPath, func() error {
			var err error
			for _, addr := range r.addrs {
				if up, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
					return nil
				}
			}
			return err
		})
		if err != nil {
			down.Close()
			continue
		}
		if !r.track(down, up) {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			var both sync.WaitGroup
			both.Add(2)
			go func() { defer both.Done(); pipe(up, down) }()
			go func() { defer both.Done(); pipe(down, up) }()
			both.Wait()
			r.untrack(down, up)
		}()
	}
}

// pipe copies src to dst, then half-closes dst so the other side sees the
// end of this direction.
func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (r *relay) stop() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
