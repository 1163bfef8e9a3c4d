// Package api owns the wire types shared by the coordinator, the agent and the
// CLI, the validation of job specs (so every side agrees on what a valid job
// is), and the HTTP client for the coordinator's /v1 API (docs/api.md).
//
// The JSON field names here are also the YAML field names of cleanroom.yaml,
// so a job spec reads the same in a project file and on the wire.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Job states. A job moves queued → running → one of the terminal states; a
// running job whose lease expires goes back to queued until MaxAttempts, then
// to lost.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
	StateLost      = "lost"
)

// JobStates lists every job state, in lifecycle order, for validating a
// filter and for messages.
var JobStates = []string{StateQueued, StateRunning, StateSucceeded, StateFailed, StateCanceled, StateLost}

// CheckJobState returns an error listing the states when s is not one
// ("" is no filter and valid).
func CheckJobState(s string) error {
	if s == "" || slices.Contains(JobStates, s) {
		return nil
	}
	return fmt.Errorf("unknown job state %q: want one of %s", s, strings.Join(JobStates, ", "))
}

// Failure classes: why a job that did not succeed ended, as the agent that
// ran it decided (ResultRequest.Class, Job.FailureClass). They let a
// pipeline tell the build's own failure from cleanroom's refusal or its
// failure to run the build (docs/cli.md maps them to exit codes).
const (
	// ClassBuild: a step (npm ci, install scripts, the build) exited
	// non-zero; the exit code is the step's own.
	ClassBuild = "build"
	// ClassRefused: the runner's policy refused the job before anything
	// ran (lockfile gate, secrets, resources, network policy).
	ClassRefused = "refused"
	// ClassPolicy: the job was ended while running by policy (an egress
	// violation with on_violation kill, or its egress audit stopped).
	ClassPolicy = "policy"
	// ClassInfrastructure: cleanroom could not run or finish the job
	// (network or sandbox setup, source fetch, artifacts, host errors,
	// the agent shutting down).
	ClassInfrastructure = "infrastructure"
	// ClassTimeout: the job ran longer than its spec's timeout.
	ClassTimeout = "timeout"
	// ClassCanceled: the job was canceled on request.
	ClassCanceled = "canceled"
)

// FailureClasses lists every failure class, for validation and messages.
var FailureClasses = []string{ClassBuild, ClassRefused, ClassPolicy, ClassInfrastructure, ClassTimeout, ClassCanceled}

// Terminal reports whether a job in this state will never change again, which
// is when log followers stop and results are refused.
func Terminal(state string) bool {
	switch state {
	case StateSucceeded, StateFailed, StateCanceled, StateLost:
		return true
	}
	return false
}

// Token kinds, used by POST /v1/tokens. Registration tokens are exchanged once
// (or a few times) for a runner token; submit tokens let a pipeline submit,
// read and cancel its own jobs (those submitted with the same token) without
// holding the admin token; audit tokens read every job, log, artifact and
// egress event, and change nothing (for security teams).
const (
	TokenRegistration = "registration"
	TokenSubmit       = "submit"
	TokenAudit        = "audit"
)

// Artifact kinds. SBOM and provenance are plain artifacts with a kind, so the
// coordinator stores them like any other file and verify can find them.
const (
	KindFile       = "file"
	KindSBOM       = "sbom"
	KindProvenance = "provenance"
)

// Egress verdicts of EgressEvent (docs/egress-log.md).
const (
	VerdictAllow = "allow"
	VerdictDeny  = "deny"
)

// OnViolation is what a denied egress attempt does to a job, in a job's
// network.on_violation and the agent's: "deny" refuses and records every
// attempt and lets the build go on; "kill" also ends the job at the first
// denied attempt with the reason "egress violation". Empty means unset (a job
// inherits its runner's; an agent defaults to deny). A job can make its
// runner's policy stricter (deny → kill), never looser: netpolicy's
// Policy.Narrow decides that, nothing else.
type OnViolation string

// The on_violation values.
const (
	OnViolationDeny OnViolation = "deny"
	OnViolationKill OnViolation = "kill"
)

// ParseOnViolation is the one parser of on_violation values: "", "deny" or
// "kill", as written (specs and configs are checked strictly).
func ParseOnViolation(s string) (OnViolation, error) {
	switch v := OnViolation(s); v {
	case "", OnViolationDeny, OnViolationKill:
		return v, nil
	}
	return "", fmt.Errorf("on_violation %q: must be %q (log and refuse) or %q (end the job at the first denied attempt)", s, OnViolationDeny, OnViolationKill)
}

// Kill reports whether the first denied attempt ends the job.
func (v OnViolation) Kill() bool { return v == OnViolationKill }

// Duration is a time.Duration written as a Go duration string ("10m", "90s")
// in JSON and YAML, because people write specs by hand. A bare number means
// seconds.
type Duration time.Duration

// D returns the standard library duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON accepts "10m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n float64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("parsing duration: want a string like \"10m\" or seconds")
		}
		*d = Duration(n * float64(time.Second))
		return nil
	}
	return d.parse(s)
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML accepts "10m" or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error { return d.parse(n.Value) }

// ParseDuration parses "90s", "10m", "1h30m", "30d" (days, for retention)
// or a plain number of seconds.
func ParseDuration(s string) (Duration, error) {
	var d Duration
	err := d.parse(s)
	return d, err
}

func (d *Duration) parse(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		*d = 0
		return nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		*d = Duration(n * float64(time.Second))
		return nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseFloat(days, 64); err == nil {
			*d = Duration(n * float64(24*time.Hour))
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parsing duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a size in bytes written as "512MiB", "2G", "100m" or a plain
// number, because memory and disk limits are written by hand.
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000}, {"tb", 1000 * 1000 * 1000 * 1000},
	{"ki", 1 << 10}, {"mi", 1 << 20}, {"gi", 1 << 30}, {"ti", 1 << 40},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
}

// ParseByteSize parses "512MiB", "2g", "1.5GiB" or "1048576": the one size
// syntax of every config file, job spec and flag. Single-letter suffixes
// and Ki…Ti / KiB…TiB are binary (as in docker and containerd), KB…TB
// decimal. "" is 0; negative or absurd (over 2^62) sizes are errors.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, nil
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("parsing size %q: want a number with an optional unit like 512MiB", s)
	}
	if v := f * float64(mult); v > 1<<62 {
		return 0, fmt.Errorf("parsing size %q: too large", s)
	}
	return ByteSize(f * float64(mult)), nil
}

// String formats the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	switch {
	case b == 0:
		return "0"
	case b%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", b>>30)
	case b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20)
	case b%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", b>>10)
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalJSON writes the size as a string such as "512MiB".
func (b ByteSize) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON accepts a string with a unit or a number of bytes.
func (b *ByteSize) UnmarshalJSON(d []byte) error {
	var s string
	if err := json.Unmarshal(d, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(d, &n); err2 != nil {
			return errors.New("parsing size: want a string like \"512MiB\" or a number of bytes")
		}
		*b = ByteSize(n)
		return nil
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalYAML writes the size as a string.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// UnmarshalYAML accepts a string with a unit or a number of bytes.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Build is the build step: either a shell script (run with sh -c) or an argv
// run without a shell. In JSON and YAML it is a string or a list of strings.
type Build struct {
	Script string
	Argv   []string
}

// IsZero reports whether no build step was given.
func (b Build) IsZero() bool { return b.Script == "" && len(b.Argv) == 0 }

// MarshalJSON writes a string for a script, a list for an argv.
func (b Build) MarshalJSON() ([]byte, error) {
	if len(b.Argv) > 0 {
		return json.Marshal(b.Argv)
	}
	return json.Marshal(b.Script)
}

// UnmarshalJSON accepts a string or a list of strings.
func (b *Build) UnmarshalJSON(d []byte) error {
	*b = Build{}
	if string(d) == "null" {
		return nil
	}
	if err := json.Unmarshal(d, &b.Script); err == nil {
		return nil
	}
	if err := json.Unmarshal(d, &b.Argv); err != nil {
		return errors.New("parsing build: want a script string or a list of strings")
	}
	return nil
}

// MarshalYAML writes a string for a script, a list for an argv.
func (b Build) MarshalYAML() (any, error) {
	if len(b.Argv) > 0 {
		return b.Argv, nil
	}
	return b.Script, nil
}

// UnmarshalYAML accepts a string or a list of strings.
func (b *Build) UnmarshalYAML(n *yaml.Node) error {
	*b = Build{}
	switch n.Kind {
	case yaml.ScalarNode:
		b.Script = n.Value
		return nil
	case yaml.SequenceNode:
		return n.Decode(&b.Argv)
	}
	return errors.New("parsing build: want a script string or a list of strings")
}

// Resources are the sandbox limits of a job. Zero means "the agent's default".
type Resources struct {
	Memory ByteSize `json:"memory,omitempty" yaml:"memory,omitempty"`
	CPUs   float64  `json:"cpus,omitempty" yaml:"cpus,omitempty"`
	PIDs   int64    `json:"pids,omitempty" yaml:"pids,omitempty"`
	Disk   ByteSize `json:"disk,omitempty" yaml:"disk,omitempty"`
}

// Over lists the fields of r that ask for more than capacity allows, in
// the words of a job spec ("resources.memory 4GiB > 2GiB"). A zero field of
// r asks for the runner's default and always fits; a zero field of
// capacity means no limit is known for it.
func (r Resources) Over(capacity Resources) []string {
	var out []string
	if r.Memory > 0 && capacity.Memory > 0 && r.Memory > capacity.Memory {
		out = append(out, fmt.Sprintf("resources.memory %s > %s", r.Memory, capacity.Memory))
	}
	if r.CPUs > 0 && capacity.CPUs > 0 && r.CPUs > capacity.CPUs {
		out = append(out, fmt.Sprintf("resources.cpus %g > %g", r.CPUs, capacity.CPUs))
	}
	if r.PIDs > 0 && capacity.PIDs > 0 && r.PIDs > capacity.PIDs {
		out = append(out, fmt.Sprintf("resources.pids %d > %d", r.PIDs, capacity.PIDs))
	}
	if r.Disk > 0 && capacity.Disk > 0 && r.Disk > capacity.Disk {
		out = append(out, fmt.Sprintf("resources.disk %s > %s", r.Disk, capacity.Disk))
	}
	return out
}

// InstallScripts is the npm install-script policy: by default no package's
// lifecycle scripts run; Allow names packages whose scripts may run, All lets
// every package run them (discouraged; recorded in provenance).
type InstallScripts struct {
	Allow []string `json:"allow,omitempty" yaml:"allow,omitempty"`
	All   bool     `json:"all,omitempty" yaml:"all,omitempty"`
}

// NetworkSpec widens the sandbox's egress allow-list for one job (Extra is a
// list of host:port destinations the agent's policy must also permit) and says
// what a denied attempt does to the job (OnViolationDeny or OnViolationKill).
type NetworkSpec struct {
	Extra       []string    `json:"extra,omitempty" yaml:"extra,omitempty"`
	OnViolation OnViolation `json:"on_violation,omitempty" yaml:"on_violation,omitempty"`
}

// JobSpec is what a developer asks for: the same structure in cleanroom.yaml
// and in POST /v1/jobs.
type JobSpec struct {
	Image          string            `json:"image,omitempty" yaml:"image,omitempty"`
	Build          Build             `json:"build" yaml:"build"`
	Artifacts      []string          `json:"artifacts,omitempty" yaml:"artifacts,omitempty"`
	Secrets        []string          `json:"secrets,omitempty" yaml:"secrets,omitempty"`
	Timeout        Duration          `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	Resources      Resources         `json:"resources,omitzero" yaml:"resources,omitempty"`
	Labels         map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	InstallScripts InstallScripts    `json:"install_scripts,omitzero" yaml:"install_scripts,omitempty"`
	Network        NetworkSpec       `json:"network,omitzero" yaml:"network,omitempty"`
	// MinReleaseAge refuses the job before any sandbox exists when its
	// lockfile pins a version published less than this long ago (a
	// cooldown: most malicious releases are found and pulled within days).
	// It can only make the runner's min_release_age stricter: the longer
	// of the two applies.
	MinReleaseAge Duration `json:"min_release_age,omitempty" yaml:"min_release_age,omitempty"`
	// MaxAttempts bounds how often a job whose lease expired is re-queued
	// (default 3). Not usually set by hand.
	MaxAttempts int `json:"max_attempts,omitempty" yaml:"max_attempts,omitempty"`
}

// Source kinds.
const (
	SourceUpload = "upload"
	SourceGit    = "git"
)

// Source says where a job's files come from: an uploaded tar.gz (kept by the
// coordinator, identified by its sha256) or a git URL and an exact commit.
type Source struct {
	Kind   string `json:"kind"`
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size,omitempty"`
	URL    string `json:"url,omitempty"`
	Commit string `json:"commit,omitempty"`
}

// Job is a build job as the coordinator reports it.
type Job struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	Spec     JobSpec `json:"spec"`
	Source   Source  `json:"source"`
	RunnerID string  `json:"runner_id,omitempty"`
	// Submitter is the id of the submit token the job was submitted with,
	// or "admin".
	Submitter string `json:"submitter,omitempty"`
	// Team is the team of the submit token the job was submitted with;
	// empty for a token without a team and for admin-submitted jobs. The
	// agent grants a build secret restricted to teams (secrets file
	// "teams:") only to a job of one of them.
	Team        string `json:"team,omitempty"`
	Attempts    int    `json:"attempts"`
	MaxAttempts int    `json:"max_attempts"`
	ExitCode    *int   `json:"exit_code,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// FailureClass says why a job that did not succeed ended (ClassBuild,
	// ClassRefused...), as the agent reported it; empty for a job that
	// succeeded, one no agent finished (canceled before it started, lost)
	// and one finished by an agent that predates classes.
	FailureClass string `json:"failure_class,omitempty"`
	Cancel       bool   `json:"cancel_requested,omitempty"`
	// QueuedReason says why a queued job has not been claimed yet, from
	// the runners the coordinator knows ("no runner online has labels
	// gpu=yes"); only GET /v1/jobs/{id} fills it, and only while queued.
	QueuedReason string     `json:"queued_reason,omitempty"`
	LogSize      int64      `json:"log_size"`
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at,omitempty"`
	FinishedAt   *time.Time `json:"finished_at,omitempty"`
}

// Lease is a runner's right to work on a job until Expires. Token is the
// fencing token: it increases with every claim of the job, and every write
// for the job must carry the current one, so a runner that lost its lease
// cannot overwrite the work of the runner that has it now.
type Lease struct {
	Token   int64     `json:"token"`
	Expires time.Time `json:"expires"`
	TTL     Duration  `json:"ttl"`
	// LogOffset is where this attempt's log starts: earlier attempts of a
	// re-queued job keep their bytes, and offsets are job-wide.
	LogOffset int64 `json:"log_offset"`
	// LogLimit is the coordinator's per-job log cap in bytes (its
	// max_log). The agent spools and sends no more than this of an
	// attempt's output, then LogTruncatedMarker once, so a build that
	// prints without end fills neither the agent's disk nor the store.
	// 0 (an older coordinator): DefaultLogLimit.
	LogLimit int64 `json:"log_limit,omitempty"`
}

// ClaimRequest asks for up to Slots jobs, waiting up to Wait for one to arrive.
type ClaimRequest struct {
	Slots int      `json:"slots"`
	Wait  Duration `json:"wait,omitempty"`
	// Capacity is the most this runner gives one job (its limits). A job
	// whose resources ask for more is left in the queue for a runner that
	// has it, instead of being claimed here and refused. nil: any job.
	Capacity *Resources `json:"capacity,omitempty"`
	// Registries are the registry URLs this runner's lockfile gate allows
	// (its network.registries). The coordinator publishes the union of the
	// online runners' in GET /v1/policy, so the CLI runs the same gate
	// before it uploads a project.
	Registries []string `json:"registries,omitempty"`
}

// Policy is the answer of GET /v1/policy: what the runners online enforce,
// so a submitter can check a project before uploading it. Registries is
// empty when no online runner has reported its registries.
type Policy struct {
	Registries []string `json:"registries"`
}

// Claim is one job handed to a runner with its lease.
type Claim struct {
	Job   Job   `json:"job"`
	Lease Lease `json:"lease"`
}

// ClaimResponse is empty when the wait ended without a job.
type ClaimResponse struct {
	Claims []Claim `json:"claims"`
}

// HeartbeatRequest renews a lease. Wait lets the coordinator hold the answer
// until a cancel is requested or Wait passes, so a cancel reaches the agent at
// once rather than at the next heartbeat.
type HeartbeatRequest struct {
	Token int64    `json:"token"`
	Wait  Duration `json:"wait,omitempty"`
}

// HeartbeatResponse tells the agent its new lease and whether to cancel.
type HeartbeatResponse struct {
	Cancel bool  `json:"cancel"`
	Lease  Lease `json:"lease"`
}

// ResultRequest ends a job. LogSize is the number of log bytes the agent
// produced: the coordinator refuses the result (409 with the expected offset)
// until it holds all of them, so a result never overtakes its log.
type ResultRequest struct {
	Token    int64  `json:"token"`
	State    string `json:"state"`
	ExitCode int    `json:"exit_code"`
	Reason   string `json:"reason,omitempty"`
	// Class is the failure class (ClassBuild...) of a job that did not
	// succeed; empty for one that did.
	Class   string `json:"class,omitempty"`
	LogSize int64  `json:"log_size"`
}

// LogAppendResponse tells the agent the next offset the coordinator expects.
type LogAppendResponse struct {
	NextOffset int64 `json:"next_offset"`
}

// EgressEvent is one egress attempt (docs/egress-log.md). DNS
// queries have Proto "dns", the queried name in Domain and the answer given in
// Answer.
type EgressEvent struct {
	Time    time.Time `json:"time"`
	Runner  string    `json:"runner"`
	Job     string    `json:"job"`
	Sandbox string    `json:"sandbox"`
	Proto   string    `json:"proto"`
	Src     string    `json:"src,omitempty"`
	Dst     string    `json:"dst,omitempty"`
	Domain  string    `json:"domain,omitempty"`
	Answer  string    `json:"answer,omitempty"`
	Verdict string    `json:"verdict"`
	Rule    string    `json:"rule,omitempty"`
	// L7 fields, set on events of the registry gateway (proto "http"):
	// the request's method and (redacted) path, the package and version it
	// names when known, the status answered, the bytes sent to the sandbox
	// and whether the tarball came from the gateway's cache ("hit",
	// "miss"; empty when no tarball was served).
	Method  string `json:"method,omitempty"`
	Path    string `json:"path,omitempty"`
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	Status  int    `json:"status,omitempty"`
	Bytes   int64  `json:"bytes,omitempty"`
	Cache   string `json:"cache,omitempty"`
	// Process names the sandbox process that made the attempt, when the
	// agent could attribute it (null otherwise).
	Process *EgressProcess `json:"process"`
}

// EgressProcess is the process an egress attempt came from, as the agent
// attributed it: its pid (in the host's pid namespace), comm, executable,
// command line (redacted and truncated) and, when a lifecycle script of an
// npm package was running, that package's name.
type EgressProcess struct {
	PID     int    `json:"pid"`
	Comm    string `json:"comm"`
	Exe     string `json:"exe,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	Package string `json:"package,omitempty"`
}

// String is the process as one column of text: "pid comm: cmdline [package]".
func (p *EgressProcess) String() string {
	if p == nil {
		return ""
	}
	s := strconv.Itoa(p.PID) + " " + p.Comm
	if p.Cmdline != "" {
		s += ": " + p.Cmdline
	}
	if p.Package != "" {
		s += " [" + p.Package + "]"
	}
	return s
}

// EgressRecord is an egress event as the coordinator serves it, with its
// cursor: one JSON object, {"cursor": N, "time": …, …the event's fields}.
// The cursor is store-wide and increases with every stored event (not by
// one: numbers may be skipped), so "events after N" misses nothing and
// repeats nothing.
type EgressRecord struct {
	Cursor int64 `json:"cursor"`
	EgressEvent
}

// EgressFilter selects events for GET /v1/egress. Zero fields match all.
type EgressFilter struct {
	Job     string
	Runner  string
	Verdict string
	Since   time.Time
	Until   time.Time
	Limit   int
	// After, when set, keeps only the events whose cursor is greater and
	// orders them by cursor instead of by time (?after=N; 0 is "from the
	// first event").
	After *int64
}

// Artifact describes a stored artifact file of a job.
type Artifact struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	SHA256    string    `json:"sha256"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// Runner is a registered agent as the admin sees it.
type Runner struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Concurrency int               `json:"concurrency"`
	CreatedAt   time.Time         `json:"created_at"`
	LastSeen    *time.Time        `json:"last_seen,omitempty"`
	RevokedAt   *time.Time        `json:"revoked_at,omitempty"`
}

// RegisterRequest exchanges a registration token for a runner token. PublicKey
// is the runner's ed25519 signing key (32 bytes, base64 in JSON), published by
// GET /v1/runners/{id}/key so provenance it signs can be verified.
type RegisterRequest struct {
	Token       string            `json:"token"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Concurrency int               `json:"concurrency,omitempty"`
	PublicKey   []byte            `json:"public_key"`
}

// RegisterResponse carries the runner's identity and its secret token, which
// the coordinator never shows again.
type RegisterResponse struct {
	RunnerID    string `json:"runner_id"`
	RunnerToken string `json:"runner_token"`
}

// RunnerKey is a runner's public signing key.
type RunnerKey struct {
	RunnerID  string     `json:"runner_id"`
	Name      string     `json:"name"`
	Algorithm string     `json:"algorithm"`
	PublicKey []byte     `json:"public_key"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// TokenRequest creates a registration or submit token. Uses 0 means
// unlimited; Expires 0 means never.
type TokenRequest struct {
	Kind    string   `json:"kind"`
	Expires Duration `json:"expires,omitempty"`
	Uses    int      `json:"uses,omitempty"`
	Note    string   `json:"note,omitempty"`
	// Team (submit tokens only) is recorded on every job the token
	// submits; build secrets may be restricted to teams.
	Team string `json:"team,omitempty"`
}

// TokenResponse carries the new token, shown once.
type TokenResponse struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Token     string     `json:"token"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Uses      int        `json:"uses,omitempty"`
	Team      string     `json:"team,omitempty"`
}

// TokenInfo describes a stored token (never its secret), for
// GET /v1/tokens and DELETE /v1/tokens/{id}.
type TokenInfo struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Note      string     `json:"note,omitempty"`
	Team      string     `json:"team,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// UsesLeft is nil for unlimited.
	UsesLeft  *int       `json:"uses_left,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// SubmitRequest is the JSON form of POST /v1/jobs (git sources); uploads use
// multipart with a "spec" part (JSON) and a "source" part (tar.gz).
type SubmitRequest struct {
	Spec   JobSpec `json:"spec"`
	Source Source  `json:"source"`
}
