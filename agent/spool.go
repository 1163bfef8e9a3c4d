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

// ErrSpool is the cause of a job failed because its spool could not be
// written: its log or its egress audit trail would be lost, so the job
// fails closed instead of going on unrecorded.
var ErrSpool = errors.New("job spool not writable")

// spoolFile is a spool file as the shippers use it: an *os.File, or in
// tests a disk that fills up.
type spoolFile interface {
	io.Writer
	io.WriterAt
	io.ReaderAt
	io.Closer
}

// openSpool creates a spool file (0600); tests replace it to fail writes.
var openSpool = func(path string, flag int) (spoolFile, error) {
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// spoolFailed fails the job closed after a spool write error: the first
// error is kept for the result and cancels the job.
func (jr *jobRun) spoolFailed(err error) {
	err = fmt.Errorf("%w: %w", ErrSpool, err)
	if jr.spoolErr.CompareAndSwap(nil, &err) {
		jr.log.Error("spool write failed; failing the job", "error", err)
		jr.cancel(err)
	}
}

// spoolError is the first spool write error of the job, or nil.
func (jr *jobRun) spoolError() error {
	if p := jr.spoolErr.Load(); p != nil {
		return *p
	}
	return nil
}

// logShipper is the job's output writer. Writes go to a spool file on disk
// (never blocking on the network); a goroutine sends the bytes to the
// coordinator in chunks with job-wide offsets, retrying with backoff and
// jitter while it is unreachable. A chunk sent twice is stored once, and a
// 409 with an expected offset re-synchronises the sender.
//
// The spool keeps at most limit bytes of the attempt's output (the lease's
// LogLimit, the coordinator's cap), then api.LogTruncatedMarker once; the
// rest is counted and dropped, so the spool never holds more than the cap
// plus the marker and the coordinator gets no writes it would drop.
type logShipper struct {
	shipper
	jr     *jobRun
	f      spoolFile
	base   int64 // job-wide offset of the spool's first byte
	limit  int64 // most output bytes kept
	marker string

	// under mu
	written int64 // bytes in the spool: output up to limit, then the marker
	sent    int64 // spool bytes the coordinator acknowledged
	full    bool  // the limit was passed or the spool failed: writes are dropped
	dropped int64 // output bytes not kept
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
	f, err := openSpool(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return nil, fmt.Errorf("creating log spool: %w", err)
	}
	limit := jr.lease.LogLimit
	if limit <= 0 {
		limit = api.DefaultLogLimit
	}
	l := &logShipper{shipper: newShipper(), jr: jr, f: f, base: jr.lease.LogOffset, limit: limit, marker: api.LogTruncatedMarker(limit)}
	go l.run()
	return l, nil
}

// Write appends to the spool and wakes the sender. It always takes all of
// p, so the build's output pipe is drained whatever happens: past the limit
// the marker is written once and the rest is dropped; a spool write error
// fails the job (ErrSpool) and later output is dropped.
func (l *logShipper) Write(p []byte) (int, error) {
	l.mu.Lock()
	if l.full {
		l.dropped += int64(len(p))
		l.mu.Unlock()
		return len(p), nil
	}
	keep := p
	if room := l.limit - l.written; int64(len(p)) > room {
		// The same cut as the store's: limit bytes kept, then the marker.
		keep = append(p[:room:room], l.marker...)
		l.full = true
		l.dropped += int64(len(p)) - room
	}
	n, err := l.f.WriteAt(keep, l.written)
	l.written += int64(n)
	if err != nil {
		l.full = true
	}
	l.mu.Unlock()
	if err != nil {
		l.jr.spoolFailed(fmt.Errorf("writing log spool: %w", err))
	}
	l.wake()
	return len(p), nil
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
	if l.dropped > 0 {
		l.jr.log.Info("job log capped", "limit", l.limit, "dropped_bytes", l.dropped)
	}
	if l.sent < l.written && l.lost == nil {
		l.lost = fmt.Errorf("sending log: %d bytes undelivered", l.written-l.sent)
	}
	return l.base + l.written, l.lost
}

// eventShipper implements Reporter: events are appended to memory and to
// a spool file (the host's copy of the audit trail: a write error fails the
// job) and sent in numbered batches; the numbers make a retried batch
// idempotent.
type eventShipper struct {
	shipper
	jr *jobRun

	spool spoolFile // written under mu; nil after a write error

	// under mu: events not yet acknowledged, the first numbered sent (the
	// count acknowledged before it). Acknowledged events are dropped from
	// memory: a job that floods denials holds only what is in flight.
	events []api.EgressEvent
	sent   int
}

// newEventShipper starts the event shipper. It is usable even when its
// spool file could not be created; the error then fails the job.
func newEventShipper(jr *jobRun) (*eventShipper, error) {
	e := &eventShipper{shipper: newShipper(), jr: jr}
	err := os.MkdirAll(jr.spool, 0o700)
	if err == nil {
		e.spool, err = openSpool(filepath.Join(jr.spool, "egress.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	}
	go e.run()
	if err != nil {
		return e, fmt.Errorf("%w: creating egress spool: %w", ErrSpool, err)
	}
	return e, nil
}

// Event queues one egress event as the executor stamped it (netpolicy
// names runner, job, sandbox and time where the event is born; the
// coordinator sets runner and job from the lease again when it stores it).
func (e *eventShipper) Event(ev api.EgressEvent) {
	var err error
	e.mu.Lock()
	e.events = append(e.events, ev)
	if e.spool != nil {
		if err = json.NewEncoder(e.spool).Encode(ev); err != nil {
			e.spool.Close()
			e.spool = nil
		}
	}
	e.mu.Unlock()
	if err != nil {
		e.jr.spoolFailed(fmt.Errorf("writing egress spool: %w", err))
	}
	e.wake()
}

func (e *eventShipper) run() {
	defer close(e.done)
	bo := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	for {
		e.mu.Lock()
		batch := e.events[:min(len(e.events), 500)]
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
			e.events = append([]api.EgressEvent(nil), e.events[len(batch):]...)
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
	if len(e.events) > 0 && e.lost == nil {
		e.lost = fmt.Errorf("sending egress events: %d undelivered", len(e.events))
	}
	return e.lost
}
