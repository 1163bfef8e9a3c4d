package netpolicy

import (
	"fmt"
	"strings"

	"github.com/florianl/go-nflog/v2"
	"github.com/ti-mo/conntrack"
)

// CheckForwarding returns ErrForwardingDisabled unless net.ipv4.ip_forward
// is 1 in the namespace at hostNS ("" = the caller's), which forward mode
// needs and cleanroom never sets. Setup and `cleanroom agent check` share it.
func CheckForwarding(hostNS string) error {
	var v string
	if err := doInNS(hostNS, func() (err error) { v, err = readSysctl("net/ipv4/ip_forward"); return }); err != nil {
		return err
	}
	if strings.TrimSpace(v) != "1" {
		return ErrForwardingDisabled
	}
	return nil
}

// probeNflogGroup is an NFLOG group no sandbox uses (theirs are 100+slot),
// bound for an instant by ProbeAudit.
const probeNflogGroup = 65000

// ProbeAudit checks that the kernel offers what the egress audit reads, in
// the namespace at nsPath: an NFLOG group can be bound (nfnetlink_log) and
// the conntrack table can be dumped over netlink (nf_conntrack_netlink).
func ProbeAudit(nsPath string) error {
	return doInNS(nsPath, func() error {
		nf, err := nflog.Open(&nflog.Config{Group: probeNflogGroup, Copymode: nflog.CopyPacket})
		if err != nil {
			return fmt.Errorf("opening an NFLOG socket (nfnetlink_log): %w", err)
		}
		nf.Close()
		c, err := conntrack.Dial(nil)
		if err != nil {
			return fmt.Errorf("opening a conntrack socket (nf_conntrack_netlink): %w", err)
		}
		defer c.Close()
		if _, err := c.Dump(nil); err != nil {
			return fmt.Errorf("reading the conntrack table (nf_conntrack_netlink): %w", err)
		}
		return nil
	})
}
