package netpolicy

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
)

// events collects what a sink delivers to OnEvent.
type events struct {
	mu  sync.Mutex
	evs []Event
}

func (e *events) add(ev Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *events) all() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.evs...)
}

// ofRule returns the events with rule.
func (e *events) ofRule(rule string) []Event {
	var out []Event
	for _, ev := range e.all() {
		if ev.Rule == rule {
			out = append(out, ev)
		}
	}
	return out
}

// testSink is a sink as Setup makes it, delivering to the returned events.
func testSink(t *testing.T, cfg Config) (*sink, *events) {
	t.Helper()
	evs := &events{}
	cfg.OnEvent = evs.add
	cfg.ID = "j1"
	s, err := newSink(cfg, "cr-j1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.close() })
	return s, evs
}

// awaitFailure waits for the sink's AuditFailed and checks it names
// component; it returns the audit-failure event, which must already be
// delivered.
func awaitFailure(t *testing.T, s *sink, evs *events, component string) Event {
	t.Helper()
	select {
	case err := <-s.auditFailed:
		if !errors.Is(err, ErrAuditFailed) || !strings.Contains(err.Error(), component+":") {
			t.Fatalf("audit failure %v, want one of %s wrapping ErrAuditFailed", err, component)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no audit failure for %s", component)
	}
	got := evs.ofRule(RuleAuditFailure)
	if len(got) != 1 {
		t.Fatalf("%d audit-failure events when AuditFailed fired: %+v", len(got), evs.all())
	}
	e := got[0]
	if e.Proto != ProtoAudit || e.Verdict != VerdictDeny || e.Domain != component || e.Answer == "" || e.Job != "j1" || e.Sandbox != "cr-j1" {
		t.Fatalf("audit-failure event %+v", e)
	}
	return e
}

func assertNoFailure(t *testing.T, s *sink) {
	t.Helper()
	select {
	case err := <-s.auditFailed:
		t.Fatalf("audit failure reported: %v", err)
	default:
	}
}

func TestAuditLogWriteErrorIsAnAuditFailure(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(map[bool]string{false: "deny", true: "kill"}[kill], func(t *testing.T) {
			s, evs := testSink(t, Config{AuditLog: "/dev/full", Policy: Policy{Kill: kill}})
			allow := Event{Proto: "tcp", Src: "10.0.0.2:1", Dst: "10.0.0.9:443", Verdict: VerdictAllow, Rule: RuleAllowRegistry}
			s.emit(allow)
			e := awaitFailure(t, s, evs, componentAuditLog)
			if !strings.Contains(e.Answer, "/dev/full") || !strings.Contains(e.Answer, syscall.ENOSPC.Error()) {
				t.Errorf("answer %q does not say which file and why", e.Answer)
			}
			// The event whose write failed still reached OnEvent, first.
			if all := evs.all(); len(all) != 2 || all[0].Rule != RuleAllowRegistry {
				t.Errorf("events %+v", all)
			}
			// Once: later events (and their failed writes) report nothing.
			s.emit(allow)
			s.fail(componentNflog, errors.New("later"))
			assertNoFailure(t, s)
			if n := len(evs.ofRule(RuleAuditFailure)); n != 1 {
				t.Errorf("%d audit-failure events", n)
			}
			select {
			case v := <-s.violations:
				if !kill || v.Rule != RuleAuditFailure {
					t.Errorf("violation %+v (kill %v)", v, kill)
				}
			default:
				if kill {
					t.Error("kill mode: the audit failure fired no violation")
				}
			}
			if err := s.close(); err == nil || !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("close = %v, want the write error", err)
			}
		})
	}
}

func TestAuditLogStopsAfterAFailedWrite(t *testing.T) {
	// A file that accepts no more bytes after the first failure would be
	// appended to after half a line: nothing is written after a failure.
	path := t.TempDir() + "/egress.jsonl"
	s, evs := testSink(t, Config{AuditLog: path})
	good := Event{Proto: "udp", Src: "a", Dst: "b", Verdict: VerdictDeny, Rule: RuleDefaultDeny}
	s.emit(good)
	f := s.file.f
	s.file.f, _ = os.Open(path) // read-only descriptor: writes fail with EBADF
	s.emit(good)
	awaitFailure(t, s, evs, componentAuditLog)
	s.file.f.Close()
	s.file.f = f
	s.emit(good)
	if err := s.close(); !errors.Is(err, syscall.EBADF) {
		t.Errorf("close = %v, want the write error", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != 1 {
		t.Errorf("audit log has %d lines after a failed write, want the 1 before it:\n%s", n, b)
	}
}

func TestNoAuditFailureOnceCloseHasBegun(t *testing.T) {
	s, evs := testSink(t, Config{Policy: Policy{Kill: true}})
	s.stopReporting()
	s.fail(componentNflog, errors.New("socket closed by Close"))
	assertNoFailure(t, s)
	if len(evs.all()) != 0 {
		t.Errorf("events %+v", evs.all())
	}
	select {
	case v := <-s.violations:
		t.Errorf("violation %+v", v)
	default:
	}
}

func TestNflogReceiveErrors(t *testing.T) {
	timeout := &netlink.OpError{Op: "receive", Err: os.ErrDeadlineExceeded}
	closed := &netlink.OpError{Op: "receive", Err: net.ErrClosed}
	t.Run("timeout is retried", func(t *testing.T) {
		s, _ := testSink(t, Config{})
		r := &nflogReader{exited: make(chan struct{})}
		if got := r.receiveError(context.Background(), timeout, s); got != 0 {
			t.Fatalf("returned %d, want 0 (go on)", got)
		}
		assertNoFailure(t, s)
	})
	t.Run("stopped by close is quiet", func(t *testing.T) {
		s, _ := testSink(t, Config{})
		r := &nflogReader{exited: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if got := r.receiveError(ctx, closed, s); got == 0 {
			t.Fatal("returned 0, want the reader to end")
		}
		assertNoFailure(t, s)
	})
	t.Run("other error is an audit failure", func(t *testing.T) {
		s, evs := testSink(t, Config{})
		r := &nflogReader{exited: make(chan struct{})}
		if got := r.receiveError(context.Background(), closed, s); got == 0 {
			t.Fatal("returned 0, want the reader to end")
		}
		e := awaitFailure(t, s, evs, componentNflog)
		if !strings.Contains(e.Answer, "receiving nflog messages") {
			t.Errorf("answer %q", e.Answer)
		}
		select {
		case <-r.exited:
		default:
			t.Error("exited not closed: close would drain a dead reader")
		}
	})
}

func TestConntrackReaderExitIsAnAuditFailure(t *testing.T) {
	none := func(net.IP, uint16) (string, bool) { return "", false }
	t.Run("worker error", func(t *testing.T) {
		s, evs := testSink(t, Config{})
		r := &ctReader{stop: make(chan struct{}), done: make(chan struct{})}
		errc := make(chan error)
		go r.run(make(chan conntrack.Event), errc, none, s)
		errc <- errors.New("decoding event: bad attribute")
		<-r.done
		e := awaitFailure(t, s, evs, componentConntrack)
		if !strings.Contains(e.Answer, "bad attribute") {
			t.Errorf("answer %q", e.Answer)
		}
	})
	t.Run("error after stop is quiet", func(t *testing.T) {
		s, _ := testSink(t, Config{})
		r := &ctReader{stop: make(chan struct{}), done: make(chan struct{})}
		errc := make(chan error, 1)
		close(r.stop)
		errc <- errors.New("socket closed")
		r.run(make(chan conntrack.Event), errc, none, s)
		assertNoFailure(t, s)
	})
}
