package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// logChunk is the largest log request the agent sends.
const logChunk = 256 << 10

// logShipper is the job's output writer. Writes go to a spool file on disk
// (never blocking on the network); a goroutine sends the bytes to the
// coordinator in chunks with job-wide offsets, retrying with backoff and
// jitter while it is unreachable. A chunk sent twice is stored once, and a
// 409 with an expected offset re-synchronises the sender.
type logShipper struct {
	shipper
	jr   *jobRun
	f    *os.File
	base int64 // job-wide offset of the spool's first byte

	// under mu
	written int64 // bytes in the spool
	sent    int64 // spool bytes the coordinator acknowledged
}

// shipper is what the log and event shippers share: the sending goroutine's
// wake-up, its end, and the first final error. The sender runs until it is
// closing with nothing left to send, or until ctx ends.
type shipper struct {
	mu      sync.Mutex
	closing bool
	lost    error // final error: lease lost, revoked, report deadline

	kick chan struct{}
	done chan struct{}   // closed by the sender when it returns
	ctx  context.Context // ended by finish's deadline
	stop context.CancelFunc
	// closeCtx ends when finish is called, cutting the batching pause short.
	closeCtx context.Context
	closeNow context.CancelFunc
}

func newShipper() shipper {
	ctx, stop := context.WithCancel(context.Background())
	closeCtx, closeNow := context.WithCancel(ctx)
	return shipper{kick: make(chan struct{}, 1), done: make(chan struct{}), ctx: ctx, stop: stop, closeCtx: closeCtx, closeNow: closeNow}
}

// wake tells the sender there is something new (or that it is closing).
func (s *shipper) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// setLost records the sender's final error; the first one counts.
func (s *shipper) setLost(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost == nil {
		s.lost = err
	}
}

// finish lets the sender send what is left until ctx ends, then stops it and
// waits until it has returned.
func (s *shipper) finish(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.closeNow()
	s.wake()
	select {
	case <-s.done:
	case <-ctx.Done():
		s.stop()
		<-s.done
	}
	s.stop()
}

func newLogShipper(jr *jobRun, path string) (*logShipper, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating spool: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating log spool: %w", err)
	}
	l := &logShipper{shipper: newShipper(), jr: jr, f: f, base: jr.lease.LogOffset}
	go l.run()
	return l, nil
}

// Write appends to the spool and wakes the sender.
func (l *logShipper) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.f.WriteAt(p, l.written)
	l.written += int64(n)
	l.mu.Unlock()
	l.wake()
	if err != nil {
		return n, fmt.Errorf("writing log spool: %w", err)
	}
	return n, nil
}

func (l *logShipper) run() {
	defer close(l.done)
	a := l.jr.a
	bo := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	buf := make([]byte, logChunk)
	for {
		l.mu.Lock()
		pending, closing, sent := l.written-l.sent, l.closing, l.sent
		l.mu.Unlock()
		if pending == 0 {
			if closing {
				return
			}
			select {
			case <-l.kick:
				sleep(l.closeCtx, 50*time.Millisecond) // gather small writes
			case <-l.ctx.Done():
				l.setLost(l.ctx.Err())
				return
			}
			continue
		}
		n, err := l.f.ReadAt(buf[:min(pending, logChunk)], sent)
		if err != nil && !errors.Is(err, io.EOF) {
			l.setLost(fmt.Errorf("reading log spool: %w", err))
			return
		}
		next, err := a.client.AppendLog(l.ctx, l.jr.job.ID, l.jr.lease.Token, l.base+sent, buf[:n])
		switch {
		case err == nil:
			bo.reset()
			l.ack(next - l.base)
		case l.ctx.Err() != nil:
			l.setLost(fmt.Errorf("sending log: %w (last error: %v)", l.ctx.Err(), err))
			return
		default:
			if exp, ok := api.ExpectedOffset(err); ok {
				l.ack(exp - l.base)
				continue
			}
			if !api.Retryable(err) {
				l.setLost(fmt.Errorf("sending log: %w", err))
				if errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrNotFound) {
					l.jr.cancel(ErrLeaseLost)
				} else if errors.Is(err, api.ErrUnauthorized) {
					l.jr.cancel(ErrRevoked)
				}
				return
			}
			sleep(l.ctx, bo.next())
		}
	}
}

// ack records that the coordinator holds spool bytes up to n.
func (l *logShipper) ack(n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent = max(0, min(n, l.written))
}

// close sends what is left (until ctx ends) and returns the job-wide log
// size the result must carry.
func (l *logShipper) close(ctx context.Context) (int64, error) {
	l.finish(ctx)
	l.f.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sent < l.written && l.lost == nil {
		l.lost = fmt.Errorf("sending log: %d bytes undelivered", l.written-l.sent)
	}
	return l.base + l.written, l.lost
}

// eventShipper implements Reporter: events are appended to memory (and a
// spool file for inspection) and sent in numbered batches; the numbers make
// a retried batch idempotent.
type eventShipper struct {
	shipper
	jr *jobRun

	spool *os.File // written under mu

	// under mu
	events []api.EgressEvent
	sent   int
}

func newEventShipper(jr *jobRun) *eventShipper {
	e := &eventShipper{shipper: newShipper(), jr: jr}
	if err := os.MkdirAll(jr.spool, 0o700); err == nil {
		e.spool, _ = os.OpenFile(filepath.Join(jr.spool, "egress.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	}
	go e.run()
	return e
}

// Event queues one egress event as the executor stamped it (netpolicy
// names runner, job, sandbox and time where the event is born; the
// coordinator sets runner and job from the lease again when it stores it).
func (e *eventShipper) Event(ev api.EgressEvent) {
	e.mu.Lock()
	e.events = append(e.events, ev)
	if e.spool != nil {
		_ = json.NewEncoder(e.spool).Encode(ev)
	}
	e.mu.Unlock()
	e.wake()
}

func (e *eventShipper) run() {
	defer close(e.done)
	bo := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	for {
		e.mu.Lock()
		batch := e.events[e.sent:min(len(e.events), e.sent+500)]
		first, closing := e.sent, e.closing
		e.mu.Unlock()
		if len(batch) == 0 {
			if closing {
				return
			}
			select {
			case <-e.kick:
				sleep(e.closeCtx, 100*time.Millisecond) // gather events into batches
			case <-e.ctx.Done():
				return
			}
			continue
		}
		err := e.jr.a.client.PostEgress(e.ctx, e.jr.job.ID, e.jr.lease.Token, int64(first), batch)
		switch {
		case err == nil:
			bo.reset()
			e.mu.Lock()
			e.sent = first + len(batch)
			e.mu.Unlock()
		case e.ctx.Err() != nil:
			e.setLost(fmt.Errorf("sending egress events: %w (last error: %v)", e.ctx.Err(), err))
			return
		case !api.Retryable(err):
			e.setLost(fmt.Errorf("sending egress events: %w", err))
			return
		default:
			sleep(e.ctx, bo.next())
		}
	}
}

// close sends the remaining events until ctx ends.
func (e *eventShipper) close(ctx context.Context) error {
	e.finish(ctx)
	if e.spool != nil {
		e.spool.Close()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sent < len(e.events) && e.lost == nil {
		e.lost = fmt.Errorf("sending egress events: %d undelivered", len(e.events)-e.sent)
	}
	return e.lost
}
