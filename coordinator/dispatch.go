package coordinator

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// hub wakes goroutines waiting for a change of one key ("log:<job>",
// "job:<job>"). A waiter takes the channel before reading state and blocks on
// it afterwards, so no change between the two is missed.
type hub struct {
	mu    sync.Mutex
	chans map[string]chan struct{}
}

func newHub() *hub { return &hub{chans: map[string]chan struct{}{}} }

// wait returns a channel closed at the next notify(key).
func (h *hub) wait(key string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.chans[key]
	if !ok {
		ch = make(chan struct{})
		h.chans[key] = ch
	}
	return ch
}

// notifyAll wakes every waiter.
func (h *hub) notifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, ch := range h.chans {
		close(ch)
		delete(h.chans, k)
	}
}

func (h *hub) notify(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.chans[key]; ok {
		close(ch)
		delete(h.chans, key)
	}
}

// claimResult is what a waiting claim receives.
type claimResult struct {
	claims []store.Claim
	err    error
}

// waiter is one long-polling claim request.
type waiter struct {
	ctx      context.Context
	runner   store.Runner
	slots    int
	capacity *api.Resources
	ch       chan claimResult // buffered 1; written once, by the dispatcher
}

// dispatcher hands queued jobs to waiting claims. One goroutine makes all
// claims, visiting waiters in arrival order: the runner that has waited
// longest gets the next job (fairness), a submit wakes it at once (no poll
// interval), and claims never contend for SQLite's write lock.
type dispatcher struct {
	s *Server
	// q is the queue it claims from (the Server's store).
	q       store.Queue
	mu      sync.Mutex
	waiters []*waiter
	kickCh  chan struct{}
}

func newDispatcher(s *Server) *dispatcher {
	return &dispatcher{s: s, q: s.store, kickCh: make(chan struct{}, 1)}
}

// kick asks for a dispatch round soon; it never blocks.
func (d *dispatcher) kick() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

func (d *dispatcher) add(w *waiter) {
	d.mu.Lock()
	d.waiters = append(d.waiters, w)
	d.mu.Unlock()
	d.kick()
}

// remove takes w out of the queue; false means the dispatcher already did
// and a result is (about to be) in w.ch.
func (d *dispatcher) remove(w *waiter) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := slices.Index(d.waiters, w)
	if i < 0 {
		return false
	}
	d.waiters = slices.Delete(d.waiters, i, i+1)
	return true
}

// run dispatches on every kick, and every safetyTick in case a change came
// from elsewhere (another replica, a clock-driven re-queue).
func (d *dispatcher) run(ctx context.Context, safetyTick time.Duration) {
	t := time.NewTicker(safetyTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kickCh:
		case <-t.C:
		}
		d.dispatch(ctx)
	}
}

func (d *dispatcher) dispatch(ctx context.Context) {
	d.mu.Lock()
	ws := slices.Clone(d.waiters)
	d.mu.Unlock()
	for _, w := range ws {
		if ctx.Err() != nil {
			return
		}
		if w.ctx.Err() != nil {
			continue // its handler is leaving and removes it
		}
		claims, err := d.q.ClaimJobs(ctx, w.runner, w.capacity, w.slots, d.s.cfg.LeaseTTL, d.s.now())
		if err == nil && len(claims) == 0 {
			continue
		}
		if !d.remove(w) {
			d.s.release(claims)
			continue
		}
		w.ch <- claimResult{claims: claims, err: err}
	}
}

// release puts claims that could not be delivered back in the queue.
func (s *Server) release(claims []store.Claim) {
	if len(claims) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range claims {
		f := store.Fence{JobID: c.Job.ID, RunnerID: c.Job.RunnerID, Token: c.Token}
		if err := s.store.ReleaseClaim(ctx, f); err != nil {
			s.log.Error("releasing undelivered claim", "job", c.Job.ID, "error", err)
		}
	}
	s.disp.kick()
}
