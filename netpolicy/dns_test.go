package netpolicy

import (
	"net"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

func TestResponderAnswersOnlyAllowedNames(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	s := &sink{job: "j1", redact: func(s string) string {
		if s == "secret-abc.evil.example" {
			return "[REDACTED].evil.example"
		}
		return s
	}, onEvent: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }, names: map[string]string{}, violations: make(chan Event, 1)}
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
