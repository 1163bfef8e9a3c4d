package netpolicy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// fakeFirewalls is an in-memory Firewalls (CNI's and tailscale's fakes are
// the model): one fakeFW per namespace and address family, created on first
// use. It needs no namespaces, so Setup's rule plan, Close's removal and GC
// run against it without root.
type fakeFirewalls struct {
	mu  sync.Mutex
	fws map[fakeKey]*fakeFW
	// hook, if set, runs before every change a fakeFW makes (op is "add",
	// "del", "newchain" or "deletechain") and fails it by returning an
	// error; it may also block.
	hook func(ns string, v6 bool, op string, r Rule) error
}

type fakeKey struct {
	ns string
	v6 bool
}

func newFakeFirewalls() *fakeFirewalls { return &fakeFirewalls{fws: map[fakeKey]*fakeFW{}} }

// open is the Firewalls func.
func (f *fakeFirewalls) open(ns string, v6 bool) (Firewall, error) { return f.get(ns, v6), nil }

// get returns the firewall of ns and family v6.
func (f *fakeFirewalls) get(ns string, v6 bool) *fakeFW {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := fakeKey{ns, v6}
	if f.fws[k] == nil {
		fw := newFake()
		fw.hook = func(op string, r Rule) error {
			if f.hook == nil {
				return nil
			}
			return f.hook(ns, v6, op, r)
		}
		f.fws[k] = fw
	}
	return f.fws[k]
}

// fakeFW is an in-memory Firewall for one namespace and family. It behaves
// as iptables does where netpolicy relies on it: adding to a missing chain
// or jumping to one fails, deleting a chain that a rule still jumps to
// fails, Del and DeleteChain of what is not there succeed, and Rules prints
// what `iptables -S` prints.
type fakeFW struct {
	mu     sync.Mutex
	tables map[string]map[string][][]string // table → chain → rule specs
	hook   func(op string, r Rule) error
}

var fakeBuiltins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// fakeTargets are the targets netpolicy uses that are not chains.
var fakeTargets = []string{"ACCEPT", "DROP", "REJECT", "RETURN", "NFLOG", "MASQUERADE"}

func newFake() *fakeFW {
	f := &fakeFW{tables: map[string]map[string][][]string{}}
	for t, chains := range fakeBuiltins {
		f.tables[t] = map[string][][]string{}
		for _, c := range chains {
			f.tables[t][c] = nil
		}
	}
	return f
}

func isBuiltin(table, chain string) bool { return slices.Contains(fakeBuiltins[table], chain) }

func (f *fakeFW) check(op string, r Rule) error {
	if f.hook == nil {
		return nil
	}
	return f.hook(op, r)
}

// target is the -j argument of spec, if any.
func target(spec []string) string {
	if i := slices.Index(spec, "-j"); i >= 0 && i+1 < len(spec) {
		return spec[i+1]
	}
	return ""
}

func (f *fakeFW) Add(r Rule, first bool) error {
	if err := f.check("add", r); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	chains := f.tables[r.Table]
	if _, ok := chains[r.Chain]; !ok {
		return fmt.Errorf("adding to %s %s: no chain/target/match by that name", r.Table, r.Chain)
	}
	if t := target(r.Spec); t != "" && !slices.Contains(fakeTargets, t) {
		if _, ok := chains[t]; !ok {
			return fmt.Errorf("adding %s: no chain/target/match by that name", r)
		}
	}
	spec := slices.Clone(r.Spec)
	if first {
		chains[r.Chain] = append([][]string{spec}, chains[r.Chain]...)
	} else {
		chains[r.Chain] = append(chains[r.Chain], spec)
	}
	return nil
}

func (f *fakeFW) Del(r Rule) error {
	if err := f.check("del", r); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rules := f.tables[r.Table][r.Chain]
	if i := slices.IndexFunc(rules, func(s []string) bool { return slices.Equal(s, r.Spec) }); i >= 0 {
		f.tables[r.Table][r.Chain] = slices.Delete(rules, i, i+1)
	}
	return nil
}

func (f *fakeFW) Check(r Rule) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.tables[r.Table][r.Chain], func(s []string) bool { return slices.Equal(s, r.Spec) }), nil
}

func (f *fakeFW) NewChain(table, chain string) error {
	if err := f.check("newchain", Rule{Table: table, Chain: chain}); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tables[table] == nil {
		return fmt.Errorf("no table %s", table)
	}
	f.tables[table][chain] = nil
	return nil
}

func (f *fakeFW) DeleteChain(table, chain string) error {
	if err := f.check("deletechain", Rule{Table: table, Chain: chain}); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tables[table][chain]; !ok {
		return nil
	}
	if isBuiltin(table, chain) {
		return fmt.Errorf("deleting built-in chain %s %s", table, chain)
	}
	for c, rules := range f.tables[table] {
		for _, s := range rules {
			if target(s) == chain {
				return fmt.Errorf("deleting chain %s: still referenced from %s", chain, c)
			}
		}
	}
	delete(f.tables[table], chain)
	return nil
}

func (f *fakeFW) Chains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(fakeBuiltins[table])
	var own []string
	for c := range f.tables[table] {
		if !isBuiltin(table, c) {
			own = append(own, c)
		}
	}
	slices.Sort(own)
	return append(out, own...), nil
}

func (f *fakeFW) Rules(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.tables[table][chain]
	if !ok {
		return nil, errors.New("no chain/target/match by that name")
	}
	out := []string{"-N " + chain}
	if isBuiltin(table, chain) {
		out = []string{"-P " + chain + " ACCEPT"}
	}
	for _, s := range rules {
		args := make([]string, len(s))
		for i, a := range s {
			args[i] = quoteArg(a) // iptables -S quotes the comment
		}
		out = append(out, "-A "+chain+" "+strings.Join(args, " "))
	}
	return out, nil
}

// rules returns the rules of table/chain, each as its spec joined by
// spaces, and whether the chain exists.
func (f *fakeFW) rules(table, chain string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.tables[table][chain]
	var out []string
	for _, s := range rules {
		out = append(out, strings.Join(s, " "))
	}
	return out, ok
}

// dump lists every chain and rule, "table chain: spec", for comparisons and
// failure messages; empty built-in chains are left out.
func (f *fakeFW) dump() []string {
	var out []string
	for _, t := range []string{"filter", "nat"} {
		chains, _ := f.Chains(t)
		for _, c := range chains {
			rules, _ := f.rules(t, c)
			if !isBuiltin(t, c) {
				out = append(out, t+" "+c)
			}
			for _, r := range rules {
				out = append(out, t+" "+c+": "+r)
			}
		}
	}
	return out
}
