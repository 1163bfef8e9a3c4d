package api

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// FieldError names one invalid field of a request. Validation collects all of
// them so a user fixes a spec in one round trip.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// FieldErrors is a list of field errors; as an error it reads as one line.
type FieldErrors []FieldError

func (fe FieldErrors) Error() string {
	parts := make([]string, len(fe))
	for i, f := range fe {
		parts[i] = f.Field + ": " + f.Message
	}
	return "invalid request: " + strings.Join(parts, "; ")
}

// Is makes field errors an ErrInvalid.
func (fe FieldErrors) Is(target error) bool { return target == ErrInvalid }

func (fe *FieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// orNil returns fe as an error, or nil when there are none (a nil
// FieldErrors in an error is not a nil error).
func (fe FieldErrors) orNil() error {
	if len(fe) > 0 {
		return fe
	}
	return nil
}

// PrefixFields returns the field errors of err with prefix before each field
// name, as those of a part of a larger request ("spec."); an error that is
// not FieldErrors becomes one field error named by the prefix.
func PrefixFields(prefix string, err error) FieldErrors {
	var fe FieldErrors
	if !errors.As(err, &fe) {
		return FieldErrors{{Field: strings.TrimSuffix(prefix, "."), Message: err.Error()}}
	}
	out := make(FieldErrors, len(fe))
	for i, f := range fe {
		out[i] = FieldError{Field: prefix + f.Field, Message: f.Message}
	}
	return out
}

// Limits the coordinator enforces on every spec.
const (
	MaxTimeout = 24 * time.Hour
	// MaxReleaseAge bounds min_release_age (a year: longer is a typo).
	MaxReleaseAge = 365 * 24 * time.Hour
	MaxLabels     = 32
	MaxArtifacts  = 256
	// MaxClaimRegistries bounds the registries a claim reports.
	MaxClaimRegistries = 16
	maxScriptBytes     = 64 << 10
)

var (
	labelKeyRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
	secretRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	commitRE    = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)
	sha256RE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	npmPackRE   = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$`)
	imageBadChr = regexp.MustCompile(`[\s]`)
	teamRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
)

// ValidLabelKey reports whether k can be a runner or job label key.
func ValidLabelKey(k string) bool { return labelKeyRE.MatchString(k) }

// TeamSyntax describes a valid team name, for error messages.
const TeamSyntax = "1-63 of a-z 0-9 . _ -, starting with a letter or digit"

// ValidTeam reports whether t is a team name (lower case, so "Web" in a
// secrets file cannot silently miss the team "web" of a token).
func ValidTeam(t string) bool { return teamRE.MatchString(t) }

// Validate checks a spec and returns every problem at once as FieldErrors, or
// nil.
func (s *JobSpec) Validate() error {
	var fe FieldErrors
	if s.Build.IsZero() {
		fe.add("build", "required: a script string or an argv list")
	}
	if len(s.Build.Script) > maxScriptBytes {
		fe.add("build", "script longer than %d bytes", maxScriptBytes)
	}
	for i, a := range s.Build.Argv {
		if a == "" && i == 0 {
			fe.add("build[0]", "the program name must not be empty")
		}
		if strings.ContainsRune(a, 0) {
			fe.add(fmt.Sprintf("build[%d]", i), "contains a NUL byte")
		}
	}
	if imageBadChr.MatchString(s.Image) {
		fe.add("image", "must be an image reference without spaces")
	}
	if s.Timeout < 0 {
		fe.add("timeout", "must not be negative")
	} else if s.Timeout.D() > MaxTimeout {
		fe.add("timeout", "must be at most %s", MaxTimeout)
	}
	if s.MinReleaseAge < 0 {
		fe.add("min_release_age", "must not be negative")
	} else if s.MinReleaseAge.D() > MaxReleaseAge {
		fe.add("min_release_age", "must be at most %s", MaxReleaseAge)
	}
	if len(s.Artifacts) > MaxArtifacts {
		fe.add("artifacts", "at most %d patterns", MaxArtifacts)
	}
	for i, a := range s.Artifacts {
		f := fmt.Sprintf("artifacts[%d]", i)
		switch {
		case a == "":
			fe.add(f, "must not be empty")
		case strings.HasPrefix(a, "/"):
			fe.add(f, "must be relative to the workspace")
		case hasDotDot(a):
			fe.add(f, "must not contain '..'")
		}
	}
	for i, sec := range s.Secrets {
		if !secretRE.MatchString(sec) {
			fe.add(fmt.Sprintf("secrets[%d]", i), "must be a secret name like NPM_TOKEN")
		}
	}
	if s.Resources.Memory < 0 {
		fe.add("resources.memory", "must not be negative")
	} else if s.Resources.Memory != 0 && s.Resources.Memory < 16<<20 {
		fe.add("resources.memory", "must be at least 16MiB")
	}
	if s.Resources.CPUs < 0 || s.Resources.CPUs > 1024 {
		fe.add("resources.cpus", "must be between 0 and 1024")
	}
	if s.Resources.PIDs < 0 {
		fe.add("resources.pids", "must not be negative")
	} else if s.Resources.PIDs != 0 && s.Resources.PIDs < 16 {
		fe.add("resources.pids", "must be at least 16")
	}
	if s.Resources.Disk < 0 {
		fe.add("resources.disk", "must not be negative")
	}
	if len(s.Labels) > MaxLabels {
		fe.add("labels", "at most %d labels", MaxLabels)
	}
	for k, v := range s.Labels {
		if !labelKeyRE.MatchString(k) {
			fe.add("labels."+k, "invalid label key")
		}
		if len(v) > 128 {
			fe.add("labels."+k, "value longer than 128 bytes")
		}
		if HasUnsafeRune(v) {
			fe.add("labels."+k, "value has a control or format character")
		}
	}
	for i, p := range s.InstallScripts.Allow {
		if !npmPackRE.MatchString(p) {
			fe.add(fmt.Sprintf("install_scripts.allow[%d]", i), "must be an npm package name")
		}
	}
	for i, e := range s.Network.Extra {
		if err := validHostPort(e); err != nil {
			fe.add(fmt.Sprintf("network.extra[%d]", i), "%v", err)
		}
	}
	if _, err := ParseOnViolation(string(s.Network.OnViolation)); err != nil {
		fe.add("network.on_violation", "must be %q or %q", OnViolationDeny, OnViolationKill)
	}
	if s.MaxAttempts < 0 || s.MaxAttempts > 10 {
		fe.add("max_attempts", "must be between 1 and 10")
	}
	return fe.orNil()
}

// Validate checks a source description (for a git source, or the declared
// fields of an upload).
func (s *Source) Validate() error {
	var fe FieldErrors
	switch s.Kind {
	case SourceGit:
		if msg := gitURLProblem(s.URL); msg != "" {
			fe.add("source.url", "%s", msg)
		}
		if !commitRE.MatchString(s.Commit) {
			fe.add("source.commit", "must be a full lowercase hex commit id (40 or 64 characters)")
		}
	case SourceUpload:
		if !sha256RE.MatchString(s.SHA256) {
			fe.add("source.sha256", "must be 64 lowercase hex characters")
		}
	default:
		fe.add("source.kind", "must be %q or %q", SourceUpload, SourceGit)
	}
	return fe.orNil()
}

// gitURLProblem says what is wrong with a git source URL ("" = nothing).
// Only https:// URLs without credentials are accepted: the agent fetches
// them in a network cage as an unprivileged user (no ssh keys, no agent
// socket, no .netrc, no local repositories), and the URL is stored,
// returned by the jobs API and signed into the provenance, so a token in it
// would leak to every reader.
func gitURLProblem(raw string) string {
	switch {
	case raw == "":
		return "required for a git source"
	case strings.HasPrefix(raw, "-"):
		return "must not start with '-'"
	case len(raw) > 2048:
		return "longer than 2048 bytes"
	case strings.IndexFunc(raw, func(r rune) bool { return r <= ' ' || r > 0x7e }) >= 0:
		return "must be printable ASCII without spaces (an IDN host in punycode, other characters percent-encoded)"
	case strings.Contains(raw, "::"):
		return "git transports (ext::, fd::, …) are not allowed: use an https:// URL"
	}
	if !strings.Contains(raw, "://") {
		colon, slash := strings.IndexByte(raw, ':'), strings.IndexByte(raw, '/')
		if colon > 0 && (slash < 0 || colon < slash) && strings.ContainsAny(raw[:colon], "@.") {
			return "ssh (user@host:path) is not supported: use an https:// URL"
		}
		if colon < 0 || (slash >= 0 && slash < colon) {
			return "local paths are not allowed: use an https:// URL"
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "not a URL: use https://host/path"
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "ssh", "git+ssh", "ssh+git":
		return "ssh is not supported: use an https:// URL"
	default:
		return fmt.Sprintf("scheme %q is not allowed: use an https:// URL", u.Scheme)
	}
	if u.User != nil {
		// Never echo the URL: it holds the credentials.
		return "must not contain credentials (user or password): the URL is stored, shown and signed; use a repository the runner may read without them"
	}
	if u.Host == "" || u.Hostname() == "" || u.Opaque != "" {
		return "must name a host: https://host/path"
	}
	if strings.HasPrefix(u.Hostname(), "-") {
		return "host must not start with '-'"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "bad port"
		}
	}
	return ""
}

// Validate checks a submit: the spec (fields "spec.…") and the source.
func (r *SubmitRequest) Validate() error {
	var fe FieldErrors
	if err := r.Spec.Validate(); err != nil {
		fe = append(fe, PrefixFields("spec.", err)...)
	}
	if err := r.Source.Validate(); err != nil {
		fe = append(fe, PrefixFields("", err)...)
	}
	return fe.orNil()
}

// Validate checks a runner registration; the registration token itself is
// the coordinator's to check.
func (r *RegisterRequest) Validate() error {
	var fe FieldErrors
	if r.Name == "" || len(r.Name) > 64 || !ValidLabelKey(r.Name) {
		fe.add("name", "required: letters, digits, '.', '_', '-', '/' (at most 64)")
	}
	if len(r.PublicKey) != ed25519.PublicKeySize {
		fe.add("public_key", "must be a 32-byte ed25519 public key")
	}
	for k, v := range r.Labels {
		if !ValidLabelKey(k) || len(v) > 128 || HasUnsafeRune(v) {
			fe.add("labels."+k, "invalid label")
		}
	}
	if r.Concurrency < 0 || r.Concurrency > 256 {
		fe.add("concurrency", "must be between 1 and 256")
	}
	return fe.orNil()
}

// Validate checks a token request; an empty kind means registration.
func (r *TokenRequest) Validate() error {
	var fe FieldErrors
	switch r.Kind {
	case "", TokenRegistration, TokenSubmit, TokenAudit:
	default:
		fe.add("kind", "must be registration, submit or audit")
	}
	if r.Expires < 0 {
		fe.add("expires", "must not be negative")
	}
	if r.Uses < 0 {
		fe.add("uses", "must not be negative")
	}
	switch {
	case r.Team == "":
	case r.Kind != TokenSubmit:
		fe.add("team", "only a submit token has a team")
	case !ValidTeam(r.Team):
		fe.add("team", "must be "+TeamSyntax)
	}
	return fe.orNil()
}

// Validate checks a claim.
func (r *ClaimRequest) Validate() error {
	var fe FieldErrors
	if r.Slots < 1 || r.Slots > 256 {
		fe.add("slots", "must be 1-256")
	}
	if len(r.Registries) > MaxClaimRegistries {
		fe.add("registries", "at most %d", MaxClaimRegistries)
	}
	for i, u := range r.Registries {
		if pu, err := url.Parse(u); err != nil || len(u) > 2048 || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			fe.add(fmt.Sprintf("registries[%d]", i), "must be an http(s) URL of at most 2048 bytes")
		}
	}
	return fe.orNil()
}

// Validate checks a result: only a final state an agent may report.
func (r *ResultRequest) Validate() error {
	var fe FieldErrors
	switch r.State {
	case StateSucceeded, StateFailed, StateCanceled:
	default:
		fe.add("state", "must be succeeded, failed or canceled")
	}
	switch {
	case r.Class != "" && !slices.Contains(FailureClasses, r.Class):
		fe.add("class", "must be one of %s", strings.Join(FailureClasses, ", "))
	case r.Class != "" && r.State == StateSucceeded:
		fe.add("class", "must be empty for a job that succeeded")
	}
	return fe.orNil()
}

// Validate checks the fields an egress query sets beyond its parsing.
func (f *EgressFilter) Validate() error {
	var fe FieldErrors
	if f.Verdict != "" && f.Verdict != VerdictAllow && f.Verdict != VerdictDeny {
		fe.add("verdict", "must be allow or deny")
	}
	if f.After != nil && *f.After < 0 {
		fe.add("after", "must be a cursor (0 or more)")
	}
	return fe.orNil()
}

// Validate checks what a runner declares when it uploads an artifact: its
// name, kind and sha256.
func (a *Artifact) Validate() error {
	var fe FieldErrors
	switch {
	case HasUnsafeRune(a.Name):
		fe.add("name", "must not contain control characters (C0, DEL, C1, bidi or other format characters)")
	case !validArtifactName(a.Name):
		fe.add("name", "must be a relative path without '..'")
	}
	if a.Kind != KindFile && a.Kind != KindSBOM && a.Kind != KindProvenance {
		fe.add("kind", "must be file, sbom or provenance")
	}
	if !sha256RE.MatchString(a.SHA256) {
		fe.add("sha256", "required: 64 lowercase hex characters")
	}
	return fe.orNil()
}

// validArtifactName: a relative slash path without '..', NUL or backslash.
func validArtifactName(n string) bool {
	if n == "" || len(n) > 255 || strings.HasPrefix(n, "/") || strings.ContainsAny(n, "\\\x00") || !utf8.ValidString(n) {
		return false
	}
	for _, p := range strings.Split(n, "/") {
		if p == "" || p == "." || p == ".." {
			return false
		}
	}
	return true
}

// HasUnsafeRune reports whether s holds a rune that controls a terminal
// (unsafeRune): a name a person reads in a listing or a download must not
// move the cursor or reorder text.
func HasUnsafeRune(s string) bool {
	return strings.IndexFunc(s, unsafeRune) >= 0
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}

func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port")
	}
	if host == "" {
		return fmt.Errorf("host must not be empty")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be 1-65535")
	}
	return nil
}
