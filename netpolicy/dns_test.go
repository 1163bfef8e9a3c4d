package netpolicy

import (
	"net"
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
