package netpolicy

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
)

// Backend selects the iptables flavour. The host side must use the same one
// as the host's existing firewall (mixing nft and legacy rules on one host is
// confusing at best); inside a fresh sandbox namespace either works.
type Backend string

const (
	// BackendAuto uses whatever `iptables` is on this machine.
	BackendAuto Backend = ""
	// BackendNFT uses iptables-nft / ip6tables-nft.
	BackendNFT Backend = "nft"
	// BackendLegacy uses iptables-legacy / ip6tables-legacy.
	BackendLegacy Backend = "legacy"
)

// Rule is one iptables rule: table, chain and the rule spec.
type Rule struct {
	Table, Chain string
	Spec         []string
}

func (r Rule) String() string {
	return r.Table + " " + r.Chain + " " + strings.Join(r.Spec, " ")
}

// Firewall is the narrow set of iptables calls netpolicy needs, for one
// address family in one namespace (tailscale linuxfw, CNI firewall). Del and
// DeleteChain are idempotent: a missing rule or chain is not an error, so
// teardown and GC can run any number of times.
type Firewall interface {
	// Add appends r to its chain (or inserts it first when first is true).
	Add(r Rule, first bool) error
	// Del removes r; a missing rule or chain is not an error.
	Del(r Rule) error
	// Check reports whether r exists.
	Check(r Rule) (bool, error)
	// NewChain creates chain in table (flushing it if it already exists).
	NewChain(table, chain string) error
	// DeleteChain flushes and removes chain; a missing chain is not an error.
	DeleteChain(table, chain string) error
	// Chains lists the chains of table.
	Chains(table string) ([]string, error)
	// Rules lists the rules of chain as iptables -S prints them.
	Rules(table, chain string) ([]string, error)
}

// Firewalls hands out the Firewall of one address family (v6 or not) in the
// network namespace at nsPath ("" = the caller's). It is netpolicy's
// injected dependency, as tailscale's linuxfw takes ipt4 and ipt6, here per
// namespace too: Setup, Close and GC reach iptables only through it. The
// Firewall it returns edits that namespace whatever thread calls it, so an
// in-memory one needs no namespaces at all (it keys its tables by nsPath).
// nil in Config or GCOptions means the real backend (iptablesFirewalls).
type Firewalls func(nsPath string, v6 bool) (Firewall, error)

// iptablesFirewalls is the real Firewalls for backend b: go-iptables and
// iptables-restore, exec'd on a thread inside the namespace.
func iptablesFirewalls(b Backend) Firewalls {
	return func(nsPath string, v6 bool) (Firewall, error) {
		f, err := newIPT(b, v6)
		if err != nil {
			return nil, err
		}
		return nsIPT{ns: nsPath, f: f}, nil
	}
}

// orIPTables returns fws, or the real backend b when fws is nil.
func orIPTables(fws Firewalls, b Backend) Firewalls {
	if fws != nil {
		return fws
	}
	return iptablesFirewalls(b)
}

// Restorer is an optional Firewall fast path: apply a whole iptables-restore
// document (--noflush) in one exec, which keeps setup under a few exec
// round-trips instead of one per rule.
type Restorer interface {
	Restore(doc []byte) error
}

// ipt is the real Firewall: go-iptables for single rules, and
// iptables-restore for batches. Commands run in the namespace of the calling
// thread; nsIPT binds it to one.
type ipt struct {
	h       *iptables.IPTables
	restore string
}

var (
	iptMu    sync.Mutex
	iptCache = map[string]*ipt{}
)

// binaries returns the iptables and iptables-restore names for b and family.
func binaries(b Backend, v6 bool) (string, string, error) {
	if b == BackendAuto {
		out, err := exec.Command("iptables", "-V").CombinedOutput()
		if err != nil {
			return "", "", fmt.Errorf("detecting iptables backend: %w", err)
		}
		b = BackendLegacy
		if bytes.Contains(out, []byte("nf_tables")) {
			b = BackendNFT
		}
	}
	base := "iptables"
	if v6 {
		base = "ip6tables"
	}
	switch b {
	case BackendNFT, BackendLegacy:
		return base + "-" + string(b), base + "-" + string(b) + "-restore", nil
	}
	return "", "", fmt.Errorf("unknown iptables backend %q", b)
}

// newIPT returns the (cached) Firewall for backend b and family v6. The
// handle itself is namespace-agnostic: each call execs a binary that inherits
// the calling thread's namespace.
func newIPT(b Backend, v6 bool) (*ipt, error) {
	key := fmt.Sprintf("%s/%v", b, v6)
	iptMu.Lock()
	defer iptMu.Unlock()
	if f, ok := iptCache[key]; ok {
		return f, nil
	}
	bin, restore, err := binaries(b, v6)
	if err != nil {
		return nil, err
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("finding %s: %w", bin, err)
	}
	proto := iptables.ProtocolIPv4
	if v6 {
		proto = iptables.ProtocolIPv6
	}
	h, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("initialising %s: %w", bin, err)
	}
	f := &ipt{h: h, restore: restore}
	iptCache[key] = f
	return f, nil
}

func notExist(err error) bool {
	var e *iptables.Error
	if errors.As(err, &e) {
		return e.IsNotExist() || strings.Contains(e.Error(), "does not exist") ||
			strings.Contains(e.Error(), "No chain/target/match")
	}
	return false
}

func (f *ipt) Add(r Rule, first bool) error {
	if first {
		return f.h.Insert(r.Table, r.Chain, 1, r.Spec...)
	}
	return f.h.Append(r.Table, r.Chain, r.Spec...)
}

func (f *ipt) Del(r Rule) error {
	err := f.h.Delete(r.Table, r.Chain, r.Spec...)
	if err == nil || notExist(err) {
		return nil
	}
	// Delete of a rule whose target chain is gone reports a generic error;
	// Check tells us whether anything is really left.
	if ok, cerr := f.h.Exists(r.Table, r.Chain, r.Spec...); cerr != nil || !ok {
		return nil
	}
	return err
}

func (f *ipt) Check(r Rule) (bool, error) {
	ok, err := f.h.Exists(r.Table, r.Chain, r.Spec...)
	if err != nil && notExist(err) {
		return false, nil
	}
	return ok, err
}

func (f *ipt) NewChain(table, chain string) error {
	return f.h.ClearChain(table, chain)
}

func (f *ipt) DeleteChain(table, chain string) error {
	ok, err := f.h.ChainExists(table, chain)
	if err != nil || !ok {
		return err
	}
	return f.h.ClearAndDeleteChain(table, chain)
}

func (f *ipt) Chains(table string) ([]string, error) { return f.h.ListChains(table) }

func (f *ipt) Rules(table, chain string) ([]string, error) { return f.h.List(table, chain) }

// nsIPT is an ipt bound to a namespace: every call runs in it (doInNS).
type nsIPT struct {
	ns string
	f  *ipt
}

// inNS runs fn inside ns and returns its result.
func inNS[T any](ns string, fn func() (T, error)) (T, error) {
	var v T
	err := doInNS(ns, func() (err error) { v, err = fn(); return })
	return v, err
}

func (n nsIPT) Add(r Rule, first bool) error {
	return doInNS(n.ns, func() error { return n.f.Add(r, first) })
}
func (n nsIPT) Del(r Rule) error { return doInNS(n.ns, func() error { return n.f.Del(r) }) }
func (n nsIPT) Check(r Rule) (bool, error) {
	return inNS(n.ns, func() (bool, error) { return n.f.Check(r) })
}
func (n nsIPT) NewChain(table, chain string) error {
	return doInNS(n.ns, func() error { return n.f.NewChain(table, chain) })
}
func (n nsIPT) DeleteChain(table, chain string) error {
	return doInNS(n.ns, func() error { return n.f.DeleteChain(table, chain) })
}
func (n nsIPT) Chains(table string) ([]string, error) {
	return inNS(n.ns, func() ([]string, error) { return n.f.Chains(table) })
}
func (n nsIPT) Rules(table, chain string) ([]string, error) {
	return inNS(n.ns, func() ([]string, error) { return n.f.Rules(table, chain) })
}
func (n nsIPT) Restore(doc []byte) error {
	return doInNS(n.ns, func() error { return n.f.Restore(doc) })
}

func (f *ipt) Restore(doc []byte) error {
	cmd := exec.Command(f.restore, "--noflush", "-w", "10")
	cmd.Stdin = bytes.NewReader(doc)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("running %s: %w: %s", f.restore, err, bytes.TrimSpace(out))
	}
	return nil
}

// ruleSet is an ordered batch: chains to create, then rules, per table.
type ruleSet struct {
	chains []Rule // Table + Chain only
	rules  []ruleOp
}

type ruleOp struct {
	Rule
	first bool
}

func (s *ruleSet) chain(table, name string) {
	s.chains = append(s.chains, Rule{Table: table, Chain: name})
}
func (s *ruleSet) add(table, chain string, spec ...string) {
	s.rules = append(s.rules, ruleOp{Rule: Rule{Table: table, Chain: chain, Spec: spec}})
}
func (s *ruleSet) insert(table, chain string, spec ...string) {
	s.rules = append(s.rules, ruleOp{Rule: Rule{Table: table, Chain: chain, Spec: spec}, first: true})
}

// restoreDoc renders s as an iptables-restore --noflush document.
func (s *ruleSet) restoreDoc() []byte {
	var tables []string
	seen := map[string]bool{}
	for _, c := range s.chains {
		if !seen[c.Table] {
			seen[c.Table] = true
			tables = append(tables, c.Table)
		}
	}
	for _, r := range s.rules {
		if !seen[r.Table] {
			seen[r.Table] = true
			tables = append(tables, r.Table)
		}
	}
	var b bytes.Buffer
	for _, t := range tables {
		fmt.Fprintf(&b, "*%s\n", t)
		for _, c := range s.chains {
			if c.Table == t {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Chain)
			}
		}
		for _, r := range s.rules {
			if r.Table != t {
				continue
			}
			op := "-A " + r.Chain
			if r.first {
				op = "-I " + r.Chain + " 1"
			}
			b.WriteString(op)
			for _, a := range r.Spec {
				b.WriteByte(' ')
				b.WriteString(quoteArg(a))
			}
			b.WriteByte('\n')
		}
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

func quoteArg(a string) string {
	if a == "" || strings.ContainsAny(a, " \t\"'") {
		return `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
	}
	return a
}

// apply installs s on fw, in one restore when fw supports it.
func (s *ruleSet) apply(fw Firewall) error {
	if r, ok := fw.(Restorer); ok {
		return r.Restore(s.restoreDoc())
	}
	for _, c := range s.chains {
		if err := fw.NewChain(c.Table, c.Chain); err != nil {
			return fmt.Errorf("creating chain %s: %w", c.Chain, err)
		}
	}
	for _, r := range s.rules {
		if err := fw.Add(r.Rule, r.first); err != nil {
			return fmt.Errorf("adding rule %s: %w", r.Rule, err)
		}
	}
	return nil
}

// remove undoes s: rules (in reverse) then chains. It tries one restore
// first and falls back to idempotent single deletes, so it works whether the
// rules are all there, partly there (a crashed setup) or already gone.
func (s *ruleSet) remove(fw Firewall) error {
	if r, ok := fw.(Restorer); ok {
		var b bytes.Buffer
		tables := map[string][]string{}
		var order []string
		add := func(t, line string) {
			if _, ok := tables[t]; !ok {
				order = append(order, t)
			}
			tables[t] = append(tables[t], line)
		}
		for i := len(s.rules) - 1; i >= 0; i-- {
			r := s.rules[i]
			if isOwnChain(s, r.Table, r.Chain) {
				continue // flushed with the chain
			}
			var parts []string
			for _, a := range r.Spec {
				parts = append(parts, quoteArg(a))
			}
			add(r.Table, "-D "+r.Chain+" "+strings.Join(parts, " "))
		}
		for _, c := range s.chains {
			add(c.Table, "-F "+c.Chain)
		}
		for _, c := range s.chains {
			add(c.Table, "-X "+c.Chain)
		}
		for _, t := range order {
			fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", t, strings.Join(tables[t], "\n"))
		}
		if r.Restore(b.Bytes()) == nil {
			return nil
		}
	}
	var errs []error
	for i := len(s.rules) - 1; i >= 0; i-- {
		r := s.rules[i]
		if isOwnChain(s, r.Table, r.Chain) {
			continue
		}
		if err := fw.Del(r.Rule); err != nil {
			errs = append(errs, fmt.Errorf("deleting rule %s: %w", r.Rule, err))
		}
	}
	for _, c := range s.chains {
		if err := fw.DeleteChain(c.Table, c.Chain); err != nil {
			errs = append(errs, fmt.Errorf("deleting chain %s: %w", c.Chain, err))
		}
	}
	return errors.Join(errs...)
}

func isOwnChain(s *ruleSet, table, chain string) bool {
	for _, c := range s.chains {
		if c.Table == table && c.Chain == chain {
			return true
		}
	}
	return false
}
