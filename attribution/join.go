package attribution

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// MaxWait is how long an event waits for the record of its attempt (the
// record normally arrives first: the hook runs before the first packet
// leaves). After it the event is delivered with a null process, so a slow
// or missing record never holds up the audit stream for longer.
const MaxWait = 100 * time.Millisecond

// Window is how far back an event looks for its record: a TCP SYN retried
// for a minute, or a connected UDP socket that sends for a while, is still
// the same attempt of the same process. The most recent match wins.
const Window = 2 * time.Minute

// slack allows for an event stamped a little before its record was (the
// NFLOG timestamp and the record's clock are read at different places).
const slack = 100 * time.Millisecond

// maxRecords bounds the records a sandbox keeps for joining.
const maxRecords = 8192

// Record is one connect or sendmsg seen by a hook, with the process as
// /proc showed it when the record was read.
type Record struct {
	PID    uint32 // tgid: the process, in the host's pid namespace
	TID    uint32 // the thread
	Comm   string // the thread's comm when it called
	Time   time.Time
	Cgroup uint64 // the v2 cgroup id
	Proto  string // tcp, udp, icmp, icmpv6, ip/<n>
	Dst    netip.AddrPort
	Proc   *api.EgressProcess
}

// decodeRecord parses one ring buffer record; wall converts the record's
// CLOCK_MONOTONIC nanoseconds to wall time.
func decodeRecord(b []byte, wall func(uint64) time.Time) (Record, error) {
	if len(b) < recordSize {
		return Record{}, errors.New("short attribution record")
	}
	le := binary.LittleEndian
	pt := le.Uint64(b[0:])
	r := Record{
		PID:    uint32(pt >> 32),
		TID:    uint32(pt),
		Time:   wall(le.Uint64(b[8:])),
		Cgroup: le.Uint64(b[16:]),
		Comm:   string(bytes.TrimRight(b[24:40], "\x00")),
		Proto:  protoName(b[60]),
	}
	port := binary.BigEndian.Uint16(b[56:58])
	var addr netip.Addr
	if b[61] == 4 {
		addr = netip.AddrFrom4([4]byte(b[40:44]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[40:56])).Unmap()
	}
	r.Dst = netip.AddrPortFrom(addr, port)
	return r, nil
}

func protoName(p byte) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	}
	return "ip/" + strconv.Itoa(int(p))
}

// joinKey is what an event and its record share: the destination and the
// protocols the record may have. ok is false for events no hook can see
// (audit events, the gateway's own http events, raw IP protocols).
func joinKey(ev api.EgressEvent) (dst netip.AddrPort, protos []string, addrOnly, ok bool) {
	switch ev.Proto {
	case "tcp", "udp":
		protos = []string{ev.Proto}
	case "dns": // a query to the responder, over UDP or TCP
		protos = []string{"udp", "tcp"}
	case "icmp", "icmpv6": // ping sockets: the address alone
		a, err := netip.ParseAddr(strings.TrimSuffix(ev.Dst, ":0"))
		if err != nil {
			return dst, nil, false, false
		}
		return netip.AddrPortFrom(a.Unmap(), 0), []string{ev.Proto}, true, true
	default:
		return dst, nil, false, false
	}
	ap, err := netip.ParseAddrPort(ev.Dst)
	if err != nil {
		return dst, nil, false, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), protos, false, true
}

// index holds a sandbox's recent records and answers which one an event
// belongs to.
type index struct {
	mu      sync.Mutex
	recs    []Record // oldest first; at most maxRecords
	changed chan struct{}
}

func newIndex() *index { return &index{changed: make(chan struct{})} }

func (ix *index) add(r Record) {
	ix.mu.Lock()
	if len(ix.recs) >= maxRecords {
		n := copy(ix.recs, ix.recs[len(ix.recs)-maxRecords/2:])
		ix.recs = ix.recs[:n]
	}
	ix.recs = append(ix.recs, r)
	close(ix.changed)
	ix.changed = make(chan struct{})
	ix.mu.Unlock()
}

// match returns the most recent record for ev, and a channel closed when
// another record arrives.
func (ix *index) match(ev api.EgressEvent) (*Record, <-chan struct{}) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return find(ix.recs, ev), ix.changed
}

// find is the join: the newest record with the event's destination and a
// protocol it may have, made before the event and no earlier than Window
// before it; failing that, the first one made within slack after it (an
// event stamped a little early). Records made before the event win over
// those after, so that a process that reached the same destination just
// after (another DNS query to the responder) does not take the event.
func find(recs []Record, ev api.EgressEvent) *Record {
	dst, protos, addrOnly, ok := joinKey(ev)
	if !ok {
		return nil
	}
	matches := func(r *Record) bool {
		if addrOnly {
			if r.Dst.Addr() != dst.Addr() {
				return false
			}
		} else if r.Dst != dst {
			return false
		}
		for _, p := range protos {
			if r.Proto == p {
				return true
			}
		}
		return false
	}
	var after *Record
	for i := len(recs) - 1; i >= 0; i-- {
		r := &recs[i]
		if r.Time.After(ev.Time) {
			if !r.Time.After(ev.Time.Add(slack)) && matches(r) {
				after = r // keep the earliest of these
			}
			continue
		}
		if ev.Time.Sub(r.Time) > Window {
			break
		}
		if matches(r) {
			return r
		}
	}
	return after
}

// wait returns the process of ev's record, waiting for the record until
// deadline at most; nil if none came.
func (ix *index) wait(ev api.EgressEvent, deadline time.Time) *api.EgressProcess {
	if _, _, _, ok := joinKey(ev); !ok {
		return nil
	}
	var timer *time.Timer
	for {
		r, changed := ix.match(ev)
		if r != nil {
			if timer != nil {
				timer.Stop()
			}
			return r.process()
		}
		d := time.Until(deadline)
		if d <= 0 {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-timer.C:
			// one last look: a record may have come with the deadline
			r, _ := ix.match(ev)
			if r != nil {
				return r.process()
			}
			return nil
		}
	}
}

// process is the record's process: what /proc said, or pid and comm when
// the process was already gone.
func (r *Record) process() *api.EgressProcess {
	if r.Proc != nil {
		p := *r.Proc
		return &p
	}
	return &api.EgressProcess{PID: int(r.PID), Comm: r.Comm}
}
