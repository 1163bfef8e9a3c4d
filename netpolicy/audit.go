package netpolicy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/florianl/go-nflog/v2"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Event is one egress attempt, allowed or denied, in the wire shape of the
// egress log (one JSON object per line; docs/egress-log.md).
//
// It has exactly the fields of api.EgressEvent (netpolicy imports nothing of
// the project), so the agent converts one into the other directly; runner,
// job, sandbox and time are stamped here, once.
type Event struct {
	Time    time.Time `json:"time"`
	Runner  string    `json:"runner"`
	Job     string    `json:"job"`
	Sandbox string    `json:"sandbox"`
	Proto   string    `json:"proto"`
	Src     string    `json:"src"`
	Dst     string    `json:"dst"`
	Domain  string    `json:"domain,omitempty"`
	Answer  string    `json:"answer,omitempty"`
	Verdict string    `json:"verdict"`
	Rule    string    `json:"rule"`
	// L7 fields (api.EgressEvent); netpolicy's own events leave them empty.
	Method  string             `json:"method,omitempty"`
	Path    string             `json:"path,omitempty"`
	Package string             `json:"package,omitempty"`
	Version string             `json:"version,omitempty"`
	Status  int                `json:"status,omitempty"`
	Bytes   int64              `json:"bytes,omitempty"`
	Cache   string             `json:"cache,omitempty"`
	Process *api.EgressProcess `json:"process"`
}

// Verdicts.
const (
	VerdictAllow = "allow"
	VerdictDeny  = "deny"
)

// ProtoAudit is the proto of an event about the audit itself (rule
// RuleAuditFailure): Domain names the component that failed, Answer says
// why.
const ProtoAudit = "audit"

// Components of the audit, as named in a RuleAuditFailure event's Domain.
const (
	componentNflog     = "nflog"
	componentConntrack = "conntrack"
	componentDNSUDP    = "dns-udp"
	componentDNSTCP    = "dns-tcp"
	componentAuditLog  = "audit-log"
)

// sink stamps, redacts and delivers events: to OnEvent, to the append-only
// log, and (first deny only, kill mode) to the violations channel. It also
// reports the first failure of the audit itself (a reader or responder that
// exits, a write to the log that fails) on auditFailed.
//
// The log is an AuditFile (one write(2) per line, fsynced at Close, nothing
// written after a failed write): the failure is reported once and Close
// returns it.
type sink struct {
	runner, job, sandbox string
	redact               func(string) string
	onEvent              func(Event)
	kill                 bool
	violations           chan Event
	auditFailed          chan error

	mu       sync.Mutex
	file     *AuditFile
	closed   bool
	stopping bool // Close has begun: readers stop on purpose, nothing is a failure
	failed   bool // a failure has been reported
	once     sync.Once
	names    map[string]string // dst IP → name answered by the responder
}

func newSink(cfg Config, sandbox string) (*sink, error) {
	s := &sink{
		runner: cfg.Runner, job: cmp.Or(cfg.Job, cfg.ID), sandbox: sandbox,
		redact: cfg.Redact, onEvent: cfg.OnEvent,
		kill:        cfg.Policy.Kill,
		violations:  make(chan Event, 1),
		auditFailed: make(chan error, 1),
		names:       map[string]string{},
	}
	if cfg.AuditLog != "" {
		f, err := OpenAuditFile(cfg.AuditLog)
		if err != nil {
			return nil, err
		}
		s.file = f
	}
	return s, nil
}

func (s *sink) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	e.Runner, e.Job, e.Sandbox = s.runner, s.job, s.sandbox
	if s.redact != nil {
		e.Domain = s.redact(e.Domain)
		e.Answer = s.redact(e.Answer)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if e.Domain == "" && e.Verdict == VerdictAllow {
		if host, _, err := net.SplitHostPort(e.Dst); err == nil {
			e.Domain = s.names[host]
		}
	}
	var werr error
	if s.file != nil {
		werr = s.file.Append(e)
	}
	s.mu.Unlock()
	if s.onEvent != nil {
		s.onEvent(e)
	}
	if s.kill && e.Verdict == VerdictDeny {
		s.once.Do(func() { s.violations <- e })
	}
	if werr != nil {
		s.fail(componentAuditLog, werr)
	}
}

// fail reports that component of the audit stopped working while the
// sandbox runs: the first time only, and never once Close has begun. The
// event comes first, so whoever reads auditFailed finds it already
// delivered to OnEvent; it is a deny, so in kill mode it is also the
// violation (unless an earlier deny was).
func (s *sink) fail(component string, err error) {
	s.mu.Lock()
	if s.stopping || s.closed || s.failed {
		s.mu.Unlock()
		return
	}
	s.failed = true
	s.mu.Unlock()
	s.emit(Event{Proto: ProtoAudit, Domain: component, Answer: err.Error(), Verdict: VerdictDeny, Rule: RuleAuditFailure})
	s.auditFailed <- fmt.Errorf("%w: %s: %w", ErrAuditFailed, component, err) // buffered, sent once
}

// stopReporting is called when Close begins: readers and the responder are
// about to be stopped on purpose.
func (s *sink) stopReporting() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
}

func (s *sink) rememberName(ip, name string) {
	s.mu.Lock()
	s.names[ip] = name
	s.mu.Unlock()
}

func (s *sink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.file == nil {
		return nil
	}
	return s.file.Close()
}

// decodePacket turns an IPv4/IPv6 packet (as NFLOG copies it) into proto,
// src and dst ("ip:port" for TCP/UDP, "ip" otherwise). IPv6 extension
// headers are walked to the transport header (see ipv6Transport). A TCP or
// UDP packet whose ports are not in the copy — a fragment other than the
// first, a copy cut short — is reported without ports.
func decodePacket(b []byte) (proto, src, dst string, ok bool) {
	if len(b) < 1 {
		return "", "", "", false
	}
	var l4 []byte
	var p uint8
	var sip, dip net.IP
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return "", "", "", false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return "", "", "", false
		}
		p, sip, dip = b[9], net.IP(b[12:16]), net.IP(b[16:20])
		if binary.BigEndian.Uint16(b[6:8])&0x1fff == 0 { // fragment offset
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return "", "", "", false
		}
		sip, dip = net.IP(b[8:24]), net.IP(b[24:40])
		p, l4 = ipv6Transport(b[6], b[40:])
	default:
		return "", "", "", false
	}
	addr := func(ip net.IP, port int) string {
		return net.JoinHostPort(ip.String(), strconv.Itoa(port))
	}
	switch p {
	case 6, 17:
		proto = "tcp"
		if p == 17 {
			proto = "udp"
		}
		if len(l4) < 4 {
			return proto, sip.String(), dip.String(), true
		}
		return proto, addr(sip, int(binary.BigEndian.Uint16(l4[0:2]))), addr(dip, int(binary.BigEndian.Uint16(l4[2:4]))), true
	case 1:
		return "icmp", sip.String(), dip.String(), true
	case 58:
		return "icmpv6", sip.String(), dip.String(), true
	default:
		return "ip/" + strconv.Itoa(int(p)), sip.String(), dip.String(), true
	}
}

// IPv6 next-header values of the extension headers ipv6Transport walks.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6AH       = 51
	ipv6DestOpts = 60
)

// maxIPv6ExtHeaders bounds the walk: a packet has at most one of each
// extension header, destination options twice (RFC 8200 4.1).
const maxIPv6ExtHeaders = 8

// ipv6Transport follows the chain of extension headers that starts with
// next header nh at b (the bytes after the fixed IPv6 header) and returns
// the protocol after the last one with the bytes that follow it. It stops at
// anything that is not one of the extension headers it knows (a transport
// protocol, ESP 50, no next header 59, an unknown header); on a header cut
// short, at the header limit, or after a fragment header of a fragment
// other than the first (whose payload has no transport header), it returns
// what it reached with no bytes.
func ipv6Transport(nh uint8, b []byte) (uint8, []byte) {
	for range maxIPv6ExtHeaders {
		var n int
		switch nh {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if len(b) < 2 {
				return nh, nil
			}
			n = (int(b[1]) + 1) * 8
		case ipv6AH:
			if len(b) < 2 {
				return nh, nil
			}
			n = (int(b[1]) + 2) * 4
		case ipv6Fragment:
			if len(b) < 8 {
				return nh, nil
			}
			if binary.BigEndian.Uint16(b[2:4])>>3 != 0 { // fragment offset
				return b[0], nil
			}
			n = 8
		default:
			return nh, b
		}
		if len(b) < n {
			return nh, nil
		}
		nh, b = b[0], b[n:]
	}
	switch nh {
	case ipv6HopByHop, ipv6Routing, ipv6Fragment, ipv6AH, ipv6DestOpts:
		return nh, nil // still in the chain after maxIPv6ExtHeaders
	}
	return nh, b
}

// nflogReader reads the sandbox's NFLOG group. Its socket is opened inside
// the sandbox namespace, so every packet it sees belongs to that sandbox:
// attribution is by namespace, not by parsing a prefix someone could spoof.
type nflogReader struct {
	nf      *nflog.Nflog
	cancel  context.CancelFunc
	group   uint16
	marker  string        // prefix of our own end-of-stream message
	drained chan struct{} // the reader has reached the marker
	exited  chan struct{} // closed when the reader stopped on an error of its own
}

// receiveError decides what the reader does after a failed receive (the
// return value of go-nflog's ErrorFunc: 0 goes on, anything else ends the
// reader). When close asked it to stop, it ends quietly; a timeout or a
// temporary error is retried; any other error ends the reader, and that is
// an audit failure: denied packets would no longer be recorded, and kill
// mode would no longer fire.
func (r *nflogReader) receiveError(ctx context.Context, err error, s *sink) int {
	if ctx.Err() != nil {
		return 1
	}
	var oe *netlink.OpError
	if errors.As(err, &oe) && (oe.Timeout() || oe.Temporary()) {
		return 0
	}
	close(r.exited)
	s.fail(componentNflog, fmt.Errorf("receiving nflog messages: %w", err))
	return 1
}

// nflogDrainTimeout bounds how long close waits for the reader to work
// through what is queued (a job that flooded denied packets) before it
// gives up on the rest.
const nflogDrainTimeout = 2 * time.Second

func startNflog(nsPath string, group uint16, s *sink) (*nflogReader, error) {
	var nf *nflog.Nflog
	err := doInNS(nsPath, func() error {
		var err error
		// QThresh 1: every logged packet is pushed to us at once. The
		// kernel's default batches them for up to a second, and a denied
		// attempt in a job's last second would be lost at teardown.
		nf, err = nflog.Open(&nflog.Config{Group: group, Copymode: nflog.CopyPacket, Bufsize: 128, QThresh: 1, Timeout: 1})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening nflog socket: %w", err)
	}
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, fmt.Errorf("configuring nflog socket: %w", err)
	}
	// A job flooding denied packets while the consumer (the coordinator
	// upload) is slow must not overflow the socket: the kernel drops what
	// does not fit. The memory is only used while messages are queued.
	if err := forceReadBuffer(nf.Con, nflogReadBuffer); err != nil {
		nf.Close()
		return nil, fmt.Errorf("sizing nflog socket buffer: %w", err)
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		nf.Close()
		return nil, fmt.Errorf("making drain marker: %w", err)
	}
	r := &nflogReader{nf: nf, group: group, marker: "cr-drain-" + hex.EncodeToString(nonce[:]),
		drained: make(chan struct{}, 1), exited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	hook := func(a nflog.Attribute) int {
		var prefix string
		if a.Prefix != nil {
			prefix = strings.TrimRight(*a.Prefix, "\x00")
		}
		if prefix == r.marker {
			select {
			case r.drained <- struct{}{}:
			default:
			}
			return 0
		}
		if a.Payload == nil {
			return 0
		}
		proto, src, dst, ok := decodePacket(*a.Payload)
		if !ok {
			return 0
		}
		rule := RuleDefaultDeny
		if prefix != "" {
			rule = strings.TrimPrefix(prefix, nflogPrefix)
		}
		e := Event{Proto: proto, Src: src, Dst: dst, Verdict: VerdictDeny, Rule: rule}
		if a.Timestamp != nil {
			e.Time = a.Timestamp.UTC()
		}
		s.emit(e)
		return 0
	}
	errf := func(err error) int { return r.receiveError(ctx, err, s) }
	if err := nf.RegisterWithErrorFunc(ctx, hook, errf); err != nil {
		cancel()
		nf.Close()
		return nil, fmt.Errorf("binding nflog group %d: %w", group, err)
	}
	return r, nil
}

// nflogReadBuffer is the nflog socket's receive buffer: room for several
// thousand queued log messages.
const nflogReadBuffer = 8 << 20

// forceReadBuffer sets a socket's receive buffer past net.core.rmem_max
// (SO_RCVBUFFORCE, which needs CAP_NET_ADMIN).
func forceReadBuffer(c *netlink.Conn, size int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil {
		return err
	}
	return serr
}

// drain waits until the reader has handled every message queued on its
// socket. The kernel queues a log message the moment a packet hits the
// NFLOG rule (QThresh 1), so once the sandbox's processes are gone all of
// them are on the socket: drain appends a marker message of its own (sent
// by netlink unicast from the socket to itself, which needs CAP_NET_ADMIN,
// and carrying a per-reader nonce) and waits for the reader to reach it, or
// for ctx to end.
func (r *nflogReader) drain(ctx context.Context) error {
	rc, err := r.nf.Con.SyscallConn()
	if err != nil {
		return err
	}
	msg, err := nflogMarkerMessage(r.group, r.marker)
	if err != nil {
		return fmt.Errorf("building drain marker: %w", err)
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			serr = err
			return
		}
		nl, ok := sa.(*unix.SockaddrNetlink)
		if !ok {
			serr = fmt.Errorf("nflog socket has address %T", sa)
			return
		}
		for try := 0; ; try++ {
			serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: nl.Pid})
			// A full receive queue drains as the reader works; retry.
			if !errors.Is(serr, unix.EAGAIN) || try == 200 {
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	if err := cmp.Or(cerr, serr); err != nil {
		return fmt.Errorf("queueing drain marker: %w", err)
	}
	select {
	case <-r.drained:
		return nil
	case <-r.exited:
		return errors.New("nflog reader stopped before reaching the end of its queue")
	case <-ctx.Done():
		return fmt.Errorf("waiting for the nflog reader to reach the end of its queue: %w", ctx.Err())
	case <-time.After(nflogDrainTimeout):
		return fmt.Errorf("nflog reader did not reach the end of its queue within %s", nflogDrainTimeout)
	}
}

// nflogMarkerMessage is an NFULNL_MSG_PACKET message that carries only a
// prefix attribute: the reader parses it as a log message without payload.
func nflogMarkerMessage(group uint16, prefix string) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(nfulaPrefix, prefix) // NUL-terminated, as the kernel sends it
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	nfgen := []byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0} // struct nfgenmsg
	binary.BigEndian.PutUint16(nfgen[2:], group)
	data := append(nfgen, attrs...) // attributes are padded to 4 bytes
	m := netlink.Message{
		Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgPacket)},
		Data:   data,
	}
	return m.MarshalBinary()
}

// From linux/netfilter/nfnetlink_log.h.
const (
	nfulnlMsgPacket = 0  // NFULNL_MSG_PACKET
	nfulaPrefix     = 10 // NFULA_PREFIX
)

func (r *nflogReader) close(ctx context.Context) error {
	if r == nil {
		return nil
	}
	select {
	case <-r.exited:
		// The reader is gone (already reported as an audit failure):
		// there is no one to drain the queue for, and its socket may be
		// what failed.
		r.cancel()
		_ = r.nf.Close()
		return nil
	default:
	}
	// Let the reader take what is already queued on the socket (the last
	// denied packets of the job) before the hook is removed.
	derr := r.drain(ctx)
	r.cancel()
	if err := r.nf.Close(); err != nil {
		return errors.Join(derr, fmt.Errorf("closing nflog socket: %w", err))
	}
	if derr != nil {
		return fmt.Errorf("draining nflog: %w", derr)
	}
	return nil
}

// ctReader turns conntrack NEW events in the sandbox namespace into allow
// events. Denied packets never reach conntrack (REJECT drops the unconfirmed
// entry), so every NEW flow here passed the allow-list.
type ctReader struct {
	conn *conntrack.Conn
	stop chan struct{}
	done chan struct{}
}

func startConntrack(nsPath string, allowed func(dst net.IP, port uint16) (string, bool), s *sink) (*ctReader, error) {
	var c *conntrack.Conn
	err := doInNS(nsPath, func() error {
		var err error
		c, err = conntrack.Dial(nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening conntrack socket: %w", err)
	}
	if err := c.SetOption(netlink.NoENOBUFS, true); err != nil {
		c.Close()
		return nil, fmt.Errorf("configuring conntrack socket: %w", err)
	}
	evs := make(chan conntrack.Event, 256)
	errc, err := c.Listen(evs, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribing to conntrack events: %w", err)
	}
	r := &ctReader{conn: c, stop: make(chan struct{}), done: make(chan struct{})}
	go r.run(evs, errc, allowed, s)
	return r, nil
}

// run turns the events of the conntrack socket into allow events until
// close stops it. The library's worker hands over an error when it stops on
// its own (a failed receive, a message it cannot decode): that is an audit
// failure, as allowed flows would no longer be recorded.
func (r *ctReader) run(evs <-chan conntrack.Event, errc <-chan error, allowed func(dst net.IP, port uint16) (string, bool), s *sink) {
	defer close(r.done)
	for {
		select {
		case ev := <-evs:
			if ev.Flow == nil {
				continue
			}
			t := ev.Flow.TupleOrig
			rule, ok := allowed(net.IP(t.IP.DestinationAddress.AsSlice()), t.Proto.DestinationPort)
			if !ok {
				continue
			}
			proto := "tcp"
			if t.Proto.Protocol == 17 {
				proto = "udp"
			}
			s.emit(Event{
				Proto:   proto,
				Src:     net.JoinHostPort(t.IP.SourceAddress.String(), strconv.Itoa(int(t.Proto.SourcePort))),
				Dst:     net.JoinHostPort(t.IP.DestinationAddress.String(), strconv.Itoa(int(t.Proto.DestinationPort))),
				Verdict: VerdictAllow, Rule: rule,
			})
		case err := <-errc:
			select {
			case <-r.stop:
			default:
				s.fail(componentConntrack, fmt.Errorf("receiving conntrack events: %w", err))
			}
			return
		case <-r.stop:
			return
		}
	}
}

func (r *ctReader) close() error {
	if r == nil {
		return nil
	}
	close(r.stop)
	<-r.done
	err := r.conn.Close()
	if err != nil {
		return fmt.Errorf("closing conntrack socket: %w", err)
	}
	return nil
}
