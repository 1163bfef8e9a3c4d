package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// responder is the sandbox's only resolver: it answers A queries for the
// allowed names with the addresses resolved on the host at setup, AAAA for
// them with an empty answer, and NXDOMAIN for every other name. Every query
// is an audit event. Over TCP it serves at most tcpMax connections of the
// sandbox at a time, each closed after tcpIdle without a complete query.
type responder struct {
	names   map[string][]net.IP // fqdn → IPv4 answers
	sink    *sink
	tcpMax  int
	tcpIdle time.Duration
	udp     *dns.Server
	tcp     *dns.Server
	wg      sync.WaitGroup
	closing atomic.Bool
	closeMu sync.Once
}

// Limits of DNS over TCP, per sandbox (each has its own responder). A
// resolver needs TCP only for answers that do not fit a datagram, one
// connection at a time; the cap keeps a sandbox from holding open
// connections (and goroutines) of the agent without bound.
const (
	dnsTCPMaxConns    = 16
	dnsTCPIdleTimeout = 2 * time.Second
)

// newResponder builds the answer table from dests.
func newResponder(dests []Destination, s *sink) *responder {
	r := &responder{names: map[string][]net.IP{}, sink: s, tcpMax: dnsTCPMaxConns, tcpIdle: dnsTCPIdleTimeout}
	for _, d := range dests {
		if d.Host == "" || net.ParseIP(d.Host) != nil {
			continue
		}
		fq := dns.Fqdn(strings.ToLower(d.Host))
		for _, ip := range d.IPs {
			if ip4 := ip.To4(); ip4 != nil {
				r.names[fq] = append(r.names[fq], ip4)
				s.rememberName(ip4.String(), d.Host)
			}
		}
	}
	return r
}

// ServeDNS implements dns.Handler.
func (r *responder) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	m.RecursionAvailable = false
	ev := Event{Proto: "dns", Src: w.RemoteAddr().String(), Dst: w.LocalAddr().String()}
	if len(q.Question) != 1 || q.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeRefused
		ev.Verdict, ev.Rule = VerdictDeny, RuleDNSRefused
		r.sink.emit(ev)
		if !r.sink.kill {
			_ = w.WriteMsg(m)
		}
		return
	}
	qq := q.Question[0]
	name := strings.ToLower(qq.Name)
	// Keep the case as asked: an exfiltrated secret may be case-sensitive
	// and the redactor must see it as sent.
	ev.Domain = strings.TrimSuffix(qq.Name, ".")
	ips, ok := r.names[name]
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
		ev.Verdict, ev.Rule, ev.Answer = VerdictDeny, RuleDNSRefused, "NXDOMAIN"
	case qq.Qtype == dns.TypeA:
		var ans []string
		for _, ip := range ips {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   ip,
			})
			ans = append(ans, ip.String())
		}
		ev.Verdict, ev.Rule, ev.Answer = VerdictAllow, RuleDNSAllow, strings.Join(ans, ",")
	default:
		// AAAA and anything else for an allowed name: NOERROR, no records.
		ev.Verdict, ev.Rule, ev.Answer = VerdictAllow, RuleDNSAllow, dns.TypeToString[qq.Qtype]+":empty"
	}
	if ev.Verdict == VerdictDeny && r.sink.kill {
		ev.Answer = "none (on_violation: kill)"
	}
	r.sink.emit(ev)
	if ev.Verdict == VerdictDeny && r.sink.kill {
		// In kill mode a refused lookup gets no answer: the job is being
		// ended, and the asker learns nothing while it waits.
		return
	}
	_ = w.WriteMsg(m)
}

// start listens on ip:53 (UDP and TCP) with sockets opened in the namespace
// at nsPath ("" = current) and serves until close.
func (r *responder) start(nsPath string, ip net.IP) error {
	return r.listen(nsPath, net.JoinHostPort(ip.String(), "53"))
}

func (r *responder) listen(nsPath, addr string) error {
	var pc net.PacketConn
	var ln net.Listener
	err := doInNS(nsPath, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	idle := func() time.Duration { return r.tcpIdle }
	r.udp = &dns.Server{PacketConn: pc, Handler: r, NotifyStartedFunc: notify}
	r.tcp = &dns.Server{Listener: r.limit(ln), Handler: r, NotifyStartedFunc: notify,
		ReadTimeout: r.tcpIdle, IdleTimeout: idle, WriteTimeout: 2 * time.Second}
	for _, sv := range []struct {
		s         *dns.Server
		component string
	}{{r.udp, componentDNSUDP}, {r.tcp, componentDNSTCP}} {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			err := sv.s.ActivateAndServe()
			if r.closing.Load() {
				return
			}
			// The sandbox's names are no longer answered (or no longer
			// audited): that is an audit failure.
			if err == nil {
				err = errors.New("server stopped")
			}
			r.sink.fail(sv.component, fmt.Errorf("serving dns: %w", err))
		}()
	}
	<-started
	<-started
	return nil
}

// limit wraps the TCP listener so that at most tcpMax connections are open
// at a time; one more is reset at once and audited as a deny (rule
// RuleDNSTCPLimit).
func (r *responder) limit(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, r.tcpMax), refuse: func(c net.Conn) {
		r.sink.emit(Event{Proto: "dns", Src: c.RemoteAddr().String(), Dst: c.LocalAddr().String(),
			Verdict: VerdictDeny, Rule: RuleDNSTCPLimit})
	}}
}

// limitListener accepts at most cap(slots) connections at a time; a
// connection's slot is freed when it is closed.
type limitListener struct {
	net.Listener
	slots  chan struct{}
	refuse func(net.Conn) // called for each connection over the limit
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
		}
		l.refuse(c)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // reset: the client learns at once
		}
		_ = c.Close()
	}
}

type limitedConn struct {
	net.Conn
	release func()
}

// Close frees the slot first, so a client that sees the connection end
// finds the slot free.
func (c *limitedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

func (r *responder) close() error {
	if r == nil || r.udp == nil {
		return nil
	}
	var err error
	r.closeMu.Do(func() {
		r.closing.Store(true)
		err = errors.Join(r.udp.Shutdown(), r.tcp.Shutdown())
		r.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("stopping dns responder: %w", err)
	}
	return nil
}
