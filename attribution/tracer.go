package attribution

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/cleanroom-ci/cleanroom/api"
)

var (
	// ErrUnavailable wraps every reason the hooks cannot be used on this
	// host: the jobs run, with process null.
	ErrUnavailable = errors.New("process attribution unavailable")
	errNoV2Cgroup  = errors.New("no cgroup v2 entry (0::) in /proc/<pid>/cgroup")
)

// cgroupRoots are where the v2 hierarchy is mounted: the whole of
// /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one.
var cgroupRoots = []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}

// V2Root returns the mount point of the cgroup v2 hierarchy.
func V2Root() (string, error) {
	for _, root := range cgroupRoots {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return root, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy at %v", cgroupRoots)
}

// Tracer is the agent's one copy of the programs and their ring buffer; it
// hands each record to the Watch of the cgroup it came from.
type Tracer struct {
	coll   *ebpf.Collection
	rd     *ringbuf.Reader
	v2root string
	procs  procReader
	done   chan struct{}

	mu      sync.Mutex
	watches map[uint64]*Watch // cgroup id → the sandbox's watch
}

// Load loads the programs and starts reading their records. The error
// (wrapping ErrUnavailable) says why attribution cannot work on this host;
// the agent logs it once and runs jobs without it.
func Load() (_ *Tracer, retErr error) {
	v2, err := V2Root()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: raising RLIMIT_MEMLOCK: %v", ErrUnavailable, err)
	}
	coll, err := ebpf.NewCollection(collectionSpec())
	if err != nil {
		return nil, fmt.Errorf("%w: loading the cgroup programs: %v", ErrUnavailable, err)
	}
	defer func() {
		if retErr != nil {
			coll.Close()
		}
	}()
	rd, err := ringbuf.NewReader(coll.Maps[eventsMapName])
	if err != nil {
		return nil, fmt.Errorf("%w: opening the ring buffer: %v", ErrUnavailable, err)
	}
	t := &Tracer{coll: coll, rd: rd, v2root: v2, procs: procReader{root: "/proc"}, done: make(chan struct{}), watches: map[uint64]*Watch{}}
	go t.read()
	return t, nil
}

// Close stops reading and unloads the programs (every Watch should be
// closed first; links still open keep their programs alive until then).
func (t *Tracer) Close() error {
	if t == nil {
		return nil
	}
	err := t.rd.Close()
	<-t.done
	t.coll.Close()
	return err
}

func (t *Tracer) read() {
	defer close(t.done)
	var rec ringbuf.Record
	for {
		if err := t.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		r, err := decodeRecord(rec.RawSample, monoToWall)
		if err != nil {
			continue
		}
		t.dispatch(r)
	}
}

// dispatch hands r to the Watch of its cgroup without waiting: the ring
// buffer and this one reader are shared by every sandbox on the agent, so
// the /proc lookups of one sandbox (which a flood of short-lived processes
// can make slow) are done on its own goroutine and never hold up the
// records of another.
func (t *Tracer) dispatch(r Record) {
	t.mu.Lock()
	w := t.watches[r.Cgroup]
	t.mu.Unlock()
	if w == nil {
		return // a step's cgroup already closed, or not ours
	}
	w.take(r)
}

// monoToWall converts CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to wall
// time, by the clocks' offset now.
func monoToWall(ns uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano() - int64(ns)))
}

// Watch is one sandbox's attribution: the hooks on its steps' cgroups,
// the records from them, and the queue that delays each of its events
// (at most MaxWait) until its record is there.
type Watch struct {
	t      *Tracer
	procs  procReader
	idx    *index
	emit   func(api.EgressEvent)
	closed chan struct{} // Close began: no more events are queued
	done   chan struct{} // the delivery goroutine has delivered everything
	recs   chan Record   // records waiting for their /proc lookup
	stop   chan struct{} // closed by Close: the lookup goroutine ends
	once   sync.Once

	mu      sync.Mutex
	links   []link.Link
	cgroups map[uint64]string // id → path under the v2 root, of every step
	queue   []pending
	wake    chan struct{}
	last    struct {
		pid  uint32
		comm string
		at   time.Time
		proc *api.EgressProcess
	}
}

// maxLookups bounds the records of a sandbox waiting for their /proc
// lookup; beyond it the sandbox's own records are dropped (its events
// then have a null process), never another sandbox's.
const maxLookups = 1024

// maxBacklog is how many events may wait for delivery before the next ones
// are delivered without looking for their record: a sandbox that floods
// denied packets must not make the agent hold its events, and each one's
// search of up to maxRecords records, without bound.
const maxBacklog = 1024

type pending struct {
	ev       api.EgressEvent
	deadline time.Time
}

// Watch starts attributing one sandbox's events: emit receives each event
// given to OnEvent, in order, with its process filled when known. redact
// is applied to command lines. On a nil Tracer the Watch passes events
// straight through with a null process.
func (t *Tracer) Watch(emit func(api.EgressEvent), redact func(string) string) *Watch {
	if t == nil {
		return &Watch{emit: emit}
	}
	w := &Watch{
		t: t, procs: procReader{root: t.procs.root, redact: redact}, idx: newIndex(), emit: emit,
		closed: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1),
		recs: make(chan Record, maxLookups), stop: make(chan struct{}),
		cgroups: map[uint64]string{},
	}
	go w.deliver()
	go w.lookups()
	return w
}

// take queues r for its /proc lookup, dropping it when the sandbox has
// maxLookups waiting already.
func (w *Watch) take(r Record) {
	select {
	case w.recs <- r:
	default:
	}
}

// lookups looks up the process of each record taken, until Close.
func (w *Watch) lookups() {
	for {
		select {
		case r := <-w.recs:
			w.record(r)
		case <-w.stop:
			return
		}
	}
}

// AttachPID attaches the hooks to the cgroup v2 of pid (a step's first
// process, created but not yet started), after detaching those of the
// previous step, whose cgroup is gone. An error leaves the step
// unattributed; it never stops it.
func (w *Watch) AttachPID(pid uint32) (retErr error) {
	if w.t == nil {
		return nil
	}
	rel, err := v2CgroupOf(filepath.Join("/proc", fmt.Sprint(pid), "cgroup"))
	if err != nil {
		return fmt.Errorf("finding the cgroup of pid %d: %w", pid, err)
	}
	self, _ := v2CgroupOf("/proc/self/cgroup")
	if rel == "/" || rel == self {
		// The hooks would see the whole host, or the agent itself.
		return fmt.Errorf("pid %d has no cgroup v2 of its own (%q)", pid, rel)
	}
	dir := filepath.Join(w.t.v2root, rel)
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return fmt.Errorf("reading cgroup %s: %w", dir, err)
	}
	var links []link.Link
	defer func() {
		if retErr != nil {
			for _, l := range links {
				l.Close()
			}
		}
	}()
	for _, h := range hooks {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: h.attach, Program: w.t.coll.Programs[h.name]})
		if err != nil {
			return fmt.Errorf("attaching %s to %s: %w", h.name, dir, err)
		}
		links = append(links, l)
	}
	w.mu.Lock()
	old := w.links
	w.links = links
	w.cgroups[st.Ino] = rel
	w.mu.Unlock()
	for _, l := range old {
		l.Close()
	}
	w.t.mu.Lock()
	w.t.watches[st.Ino] = w
	w.t.mu.Unlock()
	return nil
}

// record takes a record of this sandbox (on its lookup goroutine)
// and looks its process up in /proc at once, before a short-lived process
// is gone. Consecutive records of one process within 100 ms share one
// lookup.
func (w *Watch) record(r Record) {
	now := time.Now()
	w.mu.Lock()
	rel := w.cgroups[r.Cgroup]
	if w.last.proc != nil && w.last.pid == r.PID && w.last.comm == r.Comm && now.Sub(w.last.at) < 100*time.Millisecond {
		r.Proc = w.last.proc
	}
	w.mu.Unlock()
	if r.Proc == nil {
		r.Proc = w.procs.read(r.PID, r.Comm, rel)
		w.mu.Lock()
		w.last.pid, w.last.comm, w.last.at, w.last.proc = r.PID, r.Comm, now, r.Proc
		w.mu.Unlock()
	}
	w.idx.add(r)
}

// OnEvent queues ev for delivery with its process; it never blocks. After
// Close began, ev is delivered at once, unattributed.
func (w *Watch) OnEvent(ev api.EgressEvent) {
	if w.t == nil {
		w.emit(ev)
		return
	}
	w.mu.Lock()
	select {
	case <-w.closed:
		w.mu.Unlock()
		w.emit(ev)
		return
	default:
	}
	w.queue = append(w.queue, pending{ev: ev, deadline: time.Now().Add(MaxWait)})
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Watch) deliver() {
	defer close(w.done)
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.mu.Unlock()
			select {
			case <-w.wake:
				continue
			case <-w.closed:
				w.mu.Lock()
				n := len(w.queue)
				w.mu.Unlock()
				if n == 0 {
					return
				}
				continue
			}
		}
		p := w.queue[0]
		backlog := len(w.queue)
		w.queue = w.queue[1:]
		w.mu.Unlock()
		if p.ev.Process == nil && backlog <= maxBacklog {
			p.ev.Process = w.idx.wait(p.ev, p.deadline)
		}
		w.emit(p.ev)
	}
}

// Close delivers the events still queued (each within its MaxWait), then
// detaches the hooks and forgets the sandbox's cgroups. Nothing is left
// attached when it returns.
func (w *Watch) Close(ctx context.Context) error {
	if w.t == nil {
		return nil
	}
	w.mu.Lock()
	select {
	case <-w.closed:
	default:
		close(w.closed)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	w.once.Do(func() { close(w.stop) })
	w.mu.Lock()
	links := w.links
	w.links = nil
	ids := w.cgroups
	w.cgroups = map[uint64]string{}
	w.mu.Unlock()
	var errs []error
	for _, l := range links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	w.t.mu.Lock()
	for id := range ids {
		if w.t.watches[id] == w {
			delete(w.t.watches, id)
		}
	}
	w.t.mu.Unlock()
	return errors.Join(errs...)
}
