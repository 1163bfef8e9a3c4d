package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GCOptions says where to look for leftovers and what to spare.
type GCOptions struct {
	// HostNS is the namespace holding host ends and host chains ("" = current).
	HostNS string
	// StateDir is the one given to Setup (pool file, per-sandbox files).
	StateDir string
	// Keep reports job ids that are still running (nil = keep none).
	Keep func(jobID string) bool
	// Backend as in Config.
	Backend Backend
	// Firewall as in Config (nil = the real iptables of Backend).
	Firewall Firewalls
}

// Report lists what GC removed.
type Report struct {
	Namespaces []string `json:"namespaces,omitempty"`
	Links      []string `json:"links,omitempty"`
	Rules      []string `json:"rules,omitempty"`
	Chains     []string `json:"chains,omitempty"`
	Leases     []string `json:"leases,omitempty"`
}

// GC removes what crashed or abandoned sandboxes left: namespaces named
// cr-*, host links labelled with a job comment, host-side jump rules carrying
// the job comment and their CR- chains, and pool leases. Anything belonging
// to a job for which Keep returns true is left alone.
func GC(ctx context.Context, o GCOptions) (Report, error) {
	var rep Report
	var errs []error
	keep := func(job string) bool { return o.Keep != nil && o.Keep(job) }
	dead := map[string]bool{}

	if o.StateDir != "" {
		pool, err := NewPool("", o.StateDir)
		if err != nil {
			errs = append(errs, err)
		} else if leases, err := pool.Leases(); err != nil {
			errs = append(errs, err)
		} else {
			for _, l := range leases {
				if keep(l.Job) {
					continue
				}
				dead[l.Job] = true
				if err := pool.Release(l.Slot, l.Job); err != nil {
					errs = append(errs, err)
				}
				rep.Leases = append(rep.Leases, l.Job+"@"+l.HostIP.String())
				_ = os.RemoveAll(filepath.Join(o.StateDir, "sandboxes", l.Job))
			}
		}
	}

	// Links before namespaces: deleting a host end deletes its peer at
	// once, where dropping a namespace leaves its veth to the kernel to
	// destroy later.
	if h, err := netlinkIn(o.HostNS); err != nil {
		errs = append(errs, err)
	} else {
		links, err := h.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("listing links: %w", err))
		}
		for _, l := range links {
			a := l.Attrs()
			job, ok := strings.CutPrefix(a.Alias, commentPrefix)
			if !strings.HasPrefix(a.Name, "crv") || !ok || keep(job) {
				continue
			}
			dead[job] = true
			if err := h.LinkDel(l); err != nil {
				var nf netlink.LinkNotFoundError
				if !errors.As(err, &nf) && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("deleting link %s: %w", a.Name, err))
				}
				continue
			}
			rep.Links = append(rep.Links, a.Name)
		}
		h.Close()
	}

	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			job, ok := strings.CutPrefix(e.Name(), "cr-")
			if !ok || keep(job) {
				continue
			}
			dead[job] = true
			if err := deleteNamedNS(filepath.Join(netnsDir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Namespaces = append(rep.Namespaces, e.Name())
		}
	}

	errs = append(errs, gcFirewalls(orIPTables(o.Firewall, o.Backend), o.HostNS, keep, dead, &rep))
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("collecting leftovers: %w", err)
	}
	return rep, nil
}

// gcFirewalls runs gcRules on both address families of the host namespace.
func gcFirewalls(fws Firewalls, hostNS string, keep func(string) bool, dead map[string]bool, rep *Report) error {
	var errs []error
	for _, v6 := range []bool{false, true} {
		fw, err := fws(hostNS, v6)
		if err != nil {
			return err
		}
		errs = append(errs, gcRules(fw, keep, dead, rep, v6))
	}
	return errors.Join(errs...)
}

var gcBuiltins = map[string][]string{"filter": {"INPUT", "FORWARD", "OUTPUT"}, "nat": {"POSTROUTING", "PREROUTING", "OUTPUT"}}

// gcRules deletes jump rules with our comment for dead jobs, then CR-<hash>-*
// chains that belong to dead jobs or that no rule refers to any more.
func gcRules(fw Firewall, keep func(string) bool, dead map[string]bool, rep *Report, v6 bool) error {
	var errs []error
	fam := "ip4 "
	if v6 {
		fam = "ip6 "
	}
	for table, chains := range gcBuiltins {
		kept := map[string]bool{} // chain names still referenced by kept jobs
		for _, chain := range chains {
			rules, err := fw.Rules(table, chain)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, line := range rules {
				job, ok := commentJob(line)
				if !ok {
					continue
				}
				args := splitRule(line)
				if len(args) < 2 || args[0] != "-A" {
					continue
				}
				if keep(job) {
					kept[args[len(args)-1]] = true
					continue
				}
				dead[job] = true
				if err := fw.Del(Rule{Table: table, Chain: chain, Spec: args[2:]}); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Rules = append(rep.Rules, fam+table+" "+line)
			}
		}
		all, err := fw.Chains(table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keptHashes := map[string]bool{}
		for c := range kept {
			if len(c) > 15 {
				keptHashes[c[3:15]] = true
			}
		}
		for _, c := range all {
			if !strings.HasPrefix(c, hostChainPrefix) || len(c) != 17 || keptHashes[c[3:15]] {
				continue
			}
			if err := fw.DeleteChain(table, c); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Chains = append(rep.Chains, fam+table+" "+c)
		}
	}
	return errors.Join(errs...)
}

// commentJob extracts the job id from a rule carrying our comment.
func commentJob(line string) (string, bool) {
	i := strings.Index(line, commentPrefix)
	if i < 0 {
		return "", false
	}
	rest := line[i+len(commentPrefix):]
	if j := strings.IndexAny(rest, "\" "); j >= 0 {
		rest = rest[:j]
	}
	return rest, rest != ""
}

// splitRule splits an `iptables -S` line into arguments, honouring quotes.
func splitRule(line string) []string {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQ && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQ, have = !inQ, true
		case c == ' ' && !inQ:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
