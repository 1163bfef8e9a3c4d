package netpolicy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestResponderAnswersOnlyAllowedNames(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	s, err := newSink(Config{Job: "j1", Redact: func(s string) string {
		if s == "secret-abc.evil.example" {
			return "[REDACTED].evil.example"
		}
		return s
	}, OnEvent: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }}, "cr-j1")
	if err != nil {
		t.Fatal(err)
	}
	r := newResponder([]Destination{{Host: "Registry.Cleanroom.Test", IPs: []net.IP{net.IPv4(10, 231, 254, 2)}, Port: 4873}}, s)
	if err := r.listen("", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer r.close()
	addr := r.udp.PacketConn.LocalAddr().String()

	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		answers int
		verdict string
		domain  string
	}{
		{"allowed A", "registry.cleanroom.test.", dns.TypeA, dns.RcodeSuccess, 1, VerdictAllow, "registry.cleanroom.test"},
		{"allowed AAAA is empty", "registry.cleanroom.test.", dns.TypeAAAA, dns.RcodeSuccess, 0, VerdictAllow, "registry.cleanroom.test"},
		{"other name refused", "example.com.", dns.TypeA, dns.RcodeNameError, 0, VerdictDeny, "example.com"},
		{"encoded secret redacted", "secret-abc.evil.example.", dns.TypeA, dns.RcodeNameError, 0, VerdictDeny, "[REDACTED].evil.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			events = nil
			mu.Unlock()
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			resp, err := dns.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Rcode != tc.rcode || len(resp.Answer) != tc.answers {
				t.Fatalf("rcode %d answers %d, want %d %d", resp.Rcode, len(resp.Answer), tc.rcode, tc.answers)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(events) != 1 || events[0].Verdict != tc.verdict || events[0].Domain != tc.domain || events[0].Proto != "dns" || events[0].Job != "j1" {
				t.Fatalf("events %+v", events)
			}
		})
	}
}

// testResponder is a responder on loopback, closed at the end of the test.
func testResponder(t *testing.T, s *sink, tweak func(*responder)) *responder {
	t.Helper()
	r := newResponder([]Destination{{Host: "registry.cleanroom.test", IPs: []net.IP{net.IPv4(10, 231, 254, 2)}, Port: 4873}}, s)
	if tweak != nil {
		tweak(r)
	}
	if err := r.listen("", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func TestResponderExitIsAnAuditFailure(t *testing.T) {
	for _, tc := range []struct {
		component string
		kill      func(*responder) error
	}{
		{componentDNSUDP, func(r *responder) error { return r.udp.PacketConn.Close() }},
		{componentDNSTCP, func(r *responder) error { return r.tcp.Listener.Close() }},
	} {
		t.Run(tc.component, func(t *testing.T) {
			s, evs := testSink(t, Config{Policy: Policy{Kill: true}})
			r := testResponder(t, s, nil)
			if err := tc.kill(r); err != nil {
				t.Fatal(err)
			}
			awaitFailure(t, s, evs, tc.component)
			select {
			case v := <-s.violations:
				if v.Rule != RuleAuditFailure {
					t.Errorf("violation %+v", v)
				}
			default:
				t.Error("kill mode: no violation")
			}
		})
	}
	t.Run("close is not a failure", func(t *testing.T) {
		s, _ := testSink(t, Config{})
		r := testResponder(t, s, nil)
		if err := r.close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		assertNoFailure(t, s)
	})
}

// tcpQuery asks for the registry's A record over c.
func tcpQuery(c *dns.Conn) error {
	m := new(dns.Msg)
	m.SetQuestion("registry.cleanroom.test.", dns.TypeA)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := c.WriteMsg(m); err != nil {
		return err
	}
	resp, err := c.ReadMsg()
	if err != nil {
		return err
	}
	if len(resp.Answer) != 1 {
		return fmt.Errorf("answer %v", resp.Answer)
	}
	return nil
}

func TestResponderLimitsTCPConnections(t *testing.T) {
	s, evs := testSink(t, Config{})
	r := testResponder(t, s, nil)
	addr := r.tcp.Listener.Addr().String()
	// Each connection is served (so it holds a slot) before the next.
	var conns []*dns.Conn
	for i := range dnsTCPMaxConns {
		c, err := dns.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := tcpQuery(c); err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, dnsTCPMaxConns, err)
		}
		conns = append(conns, c)
	}
	// The reset may already end the connect.
	client := "127.0.0.1:"
	if over, err := dns.Dial("tcp", addr); err == nil {
		defer over.Close()
		client = over.LocalAddr().String()
		if err := tcpQuery(over); err == nil {
			t.Fatalf("connection %d was served", dnsTCPMaxConns+1)
		}
	}
	refused := evs.ofRule(RuleDNSTCPLimit) // emitted before the reset
	if len(refused) != 1 || refused[0].Verdict != VerdictDeny || refused[0].Proto != "dns" ||
		!strings.HasPrefix(refused[0].Src, client) || refused[0].Dst != addr {
		t.Fatalf("refusal events %+v (client %s)", refused, client)
	}
	// A closed connection frees its slot.
	conns[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := dns.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		err = tcpQuery(c)
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after a client closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertNoFailure(t, s)
}

func TestResponderClosesIdleTCPConnections(t *testing.T) {
	const idle = 200 * time.Millisecond
	for _, tc := range []struct {
		name   string
		before func(*dns.Conn) error // what the client does before going idle
	}{
		{"silent from the start", func(*dns.Conn) error { return nil }},
		{"idle after a query", tcpQuery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, evs := testSink(t, Config{})
			r := testResponder(t, s, func(r *responder) { r.tcpMax, r.tcpIdle = 1, idle })
			addr := r.tcp.Listener.Addr().String()
			c, err := dns.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := tc.before(c); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("read on an idle connection: %v, want EOF", err)
			}
			if d := time.Since(start); d > idle+time.Second {
				t.Errorf("idle connection closed after %v", d)
			}
			// With one slot, the next client is served only if the idle
			// connection gave its slot back.
			next, err := dns.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer next.Close()
			if err := tcpQuery(next); err != nil {
				t.Fatalf("next client: %v", err)
			}
			if n := len(evs.ofRule(RuleDNSTCPLimit)); n != 0 {
				t.Errorf("%d refusals", n)
			}
		})
	}
}
