package secrets

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
)

// Scope says where a secret may go. Only ScopeBuild secrets can ever reach a
// build sandbox; deploy secrets stay on the host so a compromised dependency
// cannot publish or deploy, and agent credentials identify the runner itself.
type Scope string

const (
	// ScopeBuild secrets may be granted to a build job (e.g. a read-only
	// registry token).
	ScopeBuild Scope = "build"
	// ScopeDeploy secrets are never granted to a build job; a job asking for
	// one is refused.
	ScopeDeploy Scope = "deploy"
	// ScopeAgent marks the agent's own credentials (runner token, signing
	// key, registry credentials): never grantable, always redacted.
	ScopeAgent Scope = "agent"
)

// Sentinel errors, checked with errors.Is, so callers can classify a refusal
// (e.g. fail a job as "misconfigured" rather than "infrastructure error").
var (
	// ErrUnknownSecret: a name that no secrets file entry defines.
	ErrUnknownSecret = errors.New("unknown secret")
	// ErrDeployScope: a deploy-scope secret was requested for a build job.
	ErrDeployScope = errors.New("deploy-scope secret cannot be granted to a build job")
	// ErrTeamNotAllowed: a build secret restricted to teams was requested
	// by a job of another team, or of none.
	ErrTeamNotAllowed = errors.New("secret not available to the job's team")
	// ErrAgentCredential: an agent credential was requested for a job.
	ErrAgentCredential = errors.New("agent credential cannot be granted to a job")
	// ErrTooMany: more entries or requested names than the fixed limits allow.
	ErrTooMany = errors.New("too many secrets")
	// ErrTooLarge: a secret value larger than MaxValueSize.
	ErrTooLarge = errors.New("secret value too large")
	// ErrInsecureFile: the secrets file is readable by group or others.
	ErrInsecureFile = errors.New("secrets file is readable by group or others")
	// ErrInvalid: the secrets file or an entry in it is malformed.
	ErrInvalid = errors.New("invalid secrets file")
	// ErrEnvConflict: a variable would be defined twice in a job environment,
	// e.g. a granted secret that would override a base variable.
	ErrEnvConflict = errors.New("environment variable conflict")
)

// Limits that keep a secrets file, a grant and the redactor's automaton
// bounded.
const (
	// MaxValueSize is the largest secret value accepted (1 MiB).
	MaxValueSize = 1 << 20
	// MaxEntries is the largest number of entries in a secrets file.
	MaxEntries = 256
	// MaxGrant is the largest number of names a single job may request.
	MaxGrant = 64
	// MinRedactLen is the shortest value used for redaction matching:
	// shorter values would redact ordinary words and tell an attacker little.
	MinRedactLen = 6
)

// Secret is one named secret value. Its String, GoString and MarshalJSON
// never include Value, so a Secret can be logged or serialised by mistake
// without leaking it.
type Secret struct {
	Name  string
	Scope Scope
	Value []byte
	// Source says where the value came from: "inline", "file:/path",
	// "env:NAME" or "agent".
	Source string
	// Teams (build scope only) are the teams whose jobs may be granted the
	// secret; nil means any job, with or without a team.
	Teams []string
}

// String describes the secret without its value.
func (s Secret) String() string {
	return fmt.Sprintf("%s (scope %s, from %s, %d bytes)", s.Name, s.Scope, s.Source, len(s.Value))
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string {
	return fmt.Sprintf("secrets.Secret{Name:%q, Scope:%q, Source:%q, Value:<%d bytes redacted>}", s.Name, s.Scope, s.Source, len(s.Value))
}

// MarshalJSON keeps the value out of any JSON the secret ends up in.
func (s Secret) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Name   string `json:"name"`
		Scope  Scope  `json:"scope"`
		Source string `json:"source"`
	}{s.Name, s.Scope, s.Source})
}

// teamRE is api.ValidTeam's syntax (this package imports no other of the
// project): lower case, so "Web" in a file cannot silently miss "web".
var teamRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validName reports whether name is a portable environment variable name.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
