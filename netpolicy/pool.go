package netpolicy

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// DefaultPoolCIDR is carved into /30s, one per sandbox (host end .1, sandbox
// end .2). It sits below the lab's 10.231.253/254 networks on purpose.
const DefaultPoolCIDR = "10.231.0.0/18"

// ulaPrefix is the IPv6 ULA /48 each sandbox gets a /64 of; slot i uses
// fd8c:1ea7:0:i::/64 (host end ::1, sandbox end ::2).
var ulaPrefix = net.IP{0xfd, 0x8c, 0x1e, 0xa7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// ErrPoolExhausted is returned when every /30 of the pool is taken.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Pool hands out per-sandbox address pairs. Allocations live in a JSON file
// under a state dir, changed only under an exclusive flock, so concurrent
// Setups (even in different processes) never collide and an agent restart
// (or GC) knows which addresses are still in use.
type Pool struct {
	base  net.IP // network address, 4 bytes
	slots int
	file  string
}

// Lease is one allocation: a /30 and the matching IPv6 /64.
type Lease struct {
	Slot  int    `json:"slot"`
	Job   string `json:"job"`
	Netns string `json:"netns"`
	// Owner identifies the process holding the lease (free-form; the agent
	// records "pid:starttime"), so GC on a host shared by several agents can
	// tell a live job's network from a crashed one's.
	Owner   string `json:"owner,omitempty"`
	HostIP  net.IP `json:"-"`
	PeerIP  net.IP `json:"-"`
	HostIP6 net.IP `json:"-"`
	PeerIP6 net.IP `json:"-"`
}

// NewPool opens (or creates) the pool whose allocations are kept in
// stateDir/pool.json. cidr "" means DefaultPoolCIDR.
func NewPool(cidr, stateDir string) (*Pool, error) {
	if cidr == "" {
		cidr = DefaultPoolCIDR
	}
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("parsing pool %q: %w", cidr, err)
	}
	ones, bits := n.Mask.Size()
	if bits != 32 || ones > 30 || ones < 16 {
		return nil, fmt.Errorf("parsing pool %q: need an IPv4 prefix between /16 and /30", cidr)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	return &Pool{base: n.IP.To4(), slots: 1 << (30 - ones), file: filepath.Join(stateDir, "pool.json")}, nil
}

func (p *Pool) fill(l *Lease) {
	b := binary.BigEndian.Uint32(p.base) + uint32(l.Slot)*4
	l.HostIP = make(net.IP, 4)
	l.PeerIP = make(net.IP, 4)
	binary.BigEndian.PutUint32(l.HostIP, b+1)
	binary.BigEndian.PutUint32(l.PeerIP, b+2)
	l.HostIP6 = make(net.IP, 16)
	copy(l.HostIP6, ulaPrefix)
	binary.BigEndian.PutUint16(l.HostIP6[6:], uint16(l.Slot))
	l.PeerIP6 = make(net.IP, 16)
	copy(l.PeerIP6, l.HostIP6)
	l.HostIP6[15], l.PeerIP6[15] = 1, 2
}

// locked runs fn with the pool file loaded and writes it back if fn changed it.
func (p *Pool) locked(fn func(m map[int]Lease) (bool, error)) error {
	f, err := os.OpenFile(p.file, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening pool file: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking pool file: %w", err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading pool file: %w", err)
	}
	var leases []Lease
	if st.Size() > 0 {
		if err := json.NewDecoder(f).Decode(&leases); err != nil {
			return fmt.Errorf("decoding pool file %s: %w", p.file, err)
		}
	}
	m := make(map[int]Lease, len(leases))
	for _, l := range leases {
		m[l.Slot] = l
	}
	changed, err := fn(m)
	if err != nil || !changed {
		return err
	}
	out := make([]Lease, 0, len(m))
	for _, l := range m {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	b, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("encoding pool file: %w", err)
	}
	// Rewrite in place under the lock (a rename would break the lock).
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncating pool file: %w", err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("writing pool file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing pool file: %w", err)
	}
	return nil
}

// Allocate reserves the lowest free slot for job.
func (p *Pool) Allocate(job, netns string) (Lease, error) {
	return p.AllocateOwned(job, netns, "")
}

// AllocateOwned is Allocate with the holder recorded in the lease.
func (p *Pool) AllocateOwned(job, netns, owner string) (Lease, error) {
	var got Lease
	err := p.locked(func(m map[int]Lease) (bool, error) {
		for i := 0; i < p.slots; i++ {
			if _, used := m[i]; !used {
				got = Lease{Slot: i, Job: job, Netns: netns, Owner: owner}
				m[i] = got
				return true, nil
			}
		}
		return false, ErrPoolExhausted
	})
	if err != nil {
		return Lease{}, fmt.Errorf("allocating addresses for %s: %w", job, err)
	}
	p.fill(&got)
	return got, nil
}

// Release frees slot if it is still held by job; releasing twice is fine.
func (p *Pool) Release(slot int, job string) error {
	return p.locked(func(m map[int]Lease) (bool, error) {
		if l, ok := m[slot]; ok && l.Job == job {
			delete(m, slot)
			return true, nil
		}
		return false, nil
	})
}

// Leases lists the current allocations (with addresses filled in).
func (p *Pool) Leases() ([]Lease, error) {
	var out []Lease
	err := p.locked(func(m map[int]Lease) (bool, error) {
		for _, l := range m {
			p.fill(&l)
			out = append(out, l)
		}
		return false, nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out, err
}
