package console

import (
	"fmt"

	"github.com/cleanroom-ci/cleanroom/api"
)

// ruleNames are the rules an egress event can name (netpolicy/rules.go;
// a test keeps the two in step).
var ruleNames = []string{"default-deny", "metadata-deny", "dns-refused", "allow-registry", "dns-allow"}

// ruleWords explains each rule in words for people who do not read
// iptables (docs/egress-log.md has the full table).
var ruleWords = map[string]string{
	"default-deny":   "Denied: the destination is not one of the job's allowed registries or extra destinations, so every packet to it is refused (the default for all traffic leaving the sandbox).",
	"metadata-deny":  "Denied: the link-local range 169.254.0.0/16 holds cloud metadata services that hand out credentials; no job may reach it.",
	"dns-refused":    "Denied: the sandbox's resolver answers only for allowed registry names; this name is not one, so the query got NXDOMAIN (or no answer in kill mode).",
	"allow-registry": "Allowed: a new connection to an allowed registry or extra destination (IP and port).",
	"dns-allow":      "Allowed: a DNS query for an allowed registry name, answered by the sandbox's resolver.",
}

// explainRule says in words why an event got its verdict.
func explainRule(e api.EgressEvent) string {
	if w, ok := ruleWords[e.Rule]; ok {
		return w
	}
	if e.Rule == "" && e.Verdict == api.VerdictDeny {
		return "Denied (no rule recorded)."
	}
	if e.Rule == "" {
		return "Allowed (no rule recorded)."
	}
	return fmt.Sprintf("Rule %q (unknown to this console version).", e.Rule)
}
