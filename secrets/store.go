package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// Store holds the secrets of one agent: the entries of its secrets file and
// its own credentials. It is safe for concurrent use. The redaction matcher
// built from it is cached, so many jobs share one automaton.
type Store struct {
	mu      sync.Mutex
	file    map[string]Secret // secrets file entries, by name
	agent   map[string]Secret // agent credentials, by name
	matcher *Matcher          // nil until first needed, reset on change
}

// NewStore returns an empty store, for callers that gather secrets without a
// file (tests, or an agent with agent credentials only).
func NewStore() *Store {
	return &Store{file: map[string]Secret{}, agent: map[string]Secret{}}
}

// yamlEntry is one item of the secrets list as written in the file.
type yamlEntry struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
	From  string `yaml:"from"`
	Scope string `yaml:"scope"`
	// Teams restricts a build secret to the jobs of these teams (the
	// team of the submit token that submitted the job).
	Teams []string `yaml:"teams"`
}

// LoadFile reads a secrets file. It refuses a file readable by group or
// others, and any malformed entry, naming the file, line and entry so an
// operator can fix it without guessing.
func LoadFile(path string) (*Store, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening secrets file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("checking secrets file %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("loading secrets file %s: mode %04o: %w; run: chmod 600 %s", path, perm, ErrInsecureFile, path)
	}
	// The file holds at most MaxEntries values of MaxValueSize each, plus YAML.
	data, err := io.ReadAll(io.LimitReader(f, MaxEntries*(MaxValueSize+4096)+1))
	if err != nil {
		return nil, fmt.Errorf("reading secrets file %s: %w", path, err)
	}
	return parse(path, data)
}

// parse decodes the file contents; path is used in messages only.
func parse(path string, data []byte) (*Store, error) {
	st := NewStore()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 messages already say "yaml: line N: ...".
		return nil, fmt.Errorf("parsing %s: %w: %w", path, ErrInvalid, err)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("parsing %s: %w: empty file, want a top-level \"secrets:\" list", path, ErrInvalid)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("parsing %s:%d: %w: want a mapping with a \"secrets:\" list", path, root.Line, ErrInvalid)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value != "secrets" {
			return nil, fmt.Errorf("parsing %s:%d: %w: unknown key %q", path, k.Line, ErrInvalid, k.Value)
		}
		list = v
	}
	if list == nil {
		return nil, fmt.Errorf("parsing %s: %w: no \"secrets:\" list", path, ErrInvalid)
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("parsing %s:%d: %w: \"secrets\" must be a list", path, list.Line, ErrInvalid)
	}
	if len(list.Content) > MaxEntries {
		return nil, fmt.Errorf("parsing %s:%d: %w: %d entries, at most %d allowed", path, list.Content[MaxEntries].Line, ErrTooMany, len(list.Content), MaxEntries)
	}
	lines := map[string]int{}
	for _, n := range list.Content {
		s, err := parseEntry(n)
		if err != nil {
			return nil, fmt.Errorf("parsing %s:%d: %w", path, n.Line, err)
		}
		if first, dup := lines[s.Name]; dup {
			return nil, fmt.Errorf("parsing %s:%d: secret %q: %w: duplicate name (first defined at line %d)", path, n.Line, s.Name, ErrInvalid, first)
		}
		lines[s.Name] = n.Line
		st.file[s.Name] = s
	}
	return st, nil
}

// parseEntry validates one list item and resolves its value.
func parseEntry(n *yaml.Node) (Secret, error) {
	if n.Kind != yaml.MappingNode {
		return Secret{}, fmt.Errorf("%w: each entry must be a mapping with name, value or from, and scope", ErrInvalid)
	}
	var name string
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "name" {
			name = n.Content[i+1].Value
		}
	}
	where := "entry"
	if name != "" {
		where = fmt.Sprintf("secret %q", name)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i]; k.Value {
		case "name", "value", "from", "scope", "teams":
		default:
			return Secret{}, fmt.Errorf("%s: %w: unknown key %q (line %d)", where, ErrInvalid, k.Value, k.Line)
		}
	}
	var e yamlEntry
	if err := n.Decode(&e); err != nil {
		return Secret{}, fmt.Errorf("%s: decoding: %w: %w", where, ErrInvalid, err)
	}
	if !validName(e.Name) {
		return Secret{}, fmt.Errorf("%s: %w: name must match [A-Za-z_][A-Za-z0-9_]* (an environment variable name)", where, ErrInvalid)
	}
	s := Secret{Name: e.Name, Scope: Scope(e.Scope)}
	switch s.Scope {
	case ScopeBuild, ScopeDeploy:
	case "":
		return Secret{}, fmt.Errorf("%s: %w: scope is missing (build or deploy)", where, ErrInvalid)
	default:
		return Secret{}, fmt.Errorf("%s: %w: unknown scope %q (build or deploy)", where, ErrInvalid, e.Scope)
	}
	if hasKey(n, "teams") {
		if err := checkTeams(s.Scope, e.Teams); err != nil {
			return Secret{}, fmt.Errorf("%s: %w", where, err)
		}
		s.Teams = e.Teams
	}
	hasValue := hasKey(n, "value")
	switch {
	case hasValue && e.From != "":
		return Secret{}, fmt.Errorf("%s: %w: both value and from given", where, ErrInvalid)
	case hasValue:
		s.Value, s.Source = []byte(e.Value), "inline"
	case e.From != "":
		v, err := resolveFrom(e.From)
		if err != nil {
			return Secret{}, fmt.Errorf("%s: resolving %q: %w", where, e.From, err)
		}
		s.Value, s.Source = v, e.From
	default:
		return Secret{}, fmt.Errorf("%s: %w: neither value nor from given", where, ErrInvalid)
	}
	if len(s.Value) == 0 {
		return Secret{}, fmt.Errorf("%s: %w: value is empty", where, ErrInvalid)
	}
	if len(s.Value) > MaxValueSize {
		return Secret{}, fmt.Errorf("%s: %w: %d bytes, at most %d", where, ErrTooLarge, len(s.Value), MaxValueSize)
	}
	return s, nil
}

// checkTeams validates a "teams:" list: build scope only (a deploy secret
// is never granted at all), not empty (that would grant to nobody: remove
// the entry instead), every name a valid team.
func checkTeams(scope Scope, teams []string) error {
	if scope != ScopeBuild {
		return fmt.Errorf("%w: teams apply to build-scope secrets only", ErrInvalid)
	}
	if len(teams) == 0 {
		return fmt.Errorf("%w: teams is empty (omit it to allow every team)", ErrInvalid)
	}
	for _, t := range teams {
		if !teamRE.MatchString(t) {
			return fmt.Errorf("%w: team %q: want 1-63 of a-z 0-9 . _ -, starting with a letter or digit", ErrInvalid, t)
		}
	}
	return nil
}

func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return true
		}
	}
	return false
}

// resolveFrom reads a "file:PATH" or "env:NAME" reference. One trailing
// newline is dropped from files, since token files usually end with one and a
// header or variable must not.
func resolveFrom(from string) ([]byte, error) {
	kind, ref, ok := strings.Cut(from, ":")
	if !ok || ref == "" {
		return nil, fmt.Errorf("%w: from must be file:PATH or env:NAME", ErrInvalid)
	}
	switch kind {
	case "file":
		f, err := os.Open(ref)
		if err != nil {
			return nil, fmt.Errorf("opening referenced file: %w", err)
		}
		defer f.Close()
		v, err := io.ReadAll(io.LimitReader(f, MaxValueSize+3))
		if err != nil {
			return nil, fmt.Errorf("reading referenced file: %w", err)
		}
		v = bytes.TrimSuffix(v, []byte("\n"))
		v = bytes.TrimSuffix(v, []byte("\r"))
		return v, nil
	case "env":
		v, ok := os.LookupEnv(ref)
		if !ok {
			return nil, fmt.Errorf("%w: environment variable %s is not set", ErrInvalid, ref)
		}
		return []byte(v), nil
	default:
		return nil, fmt.Errorf("%w: unknown source kind %q (file or env)", ErrInvalid, kind)
	}
}

// AddAgentCredential registers one of the agent's own credentials (runner
// token, signing key, registry credentials). Agent credentials are never
// granted to a job but are always redacted. The value is copied.
func (s *Store) AddAgentCredential(name string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agent[name] = Secret{Name: name, Scope: ScopeAgent, Value: bytes.Clone(value), Source: "agent"}
	s.matcher = nil
}

// Names lists the secrets file entries (both scopes), sorted; agent
// credentials are not listed since no job can ask for them.
func (s *Store) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.file))
	for n := range s.file {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Grant resolves the secrets a job of team ("" for a job without one) asks
// for. Only build-scope secrets are granted, and one restricted to teams
// only to a job of one of them; every offending name (unknown, deploy scope,
// another team's, agent credential) is reported at once so a job author
// fixes them in one round. The returned values are copies.
func (s *Store) Grant(team string, names []string) ([]Secret, error) {
	if len(names) > MaxGrant {
		return nil, fmt.Errorf("granting secrets: %d requested, at most %d: %w", len(names), MaxGrant, ErrTooMany)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	out := make([]Secret, 0, len(names))
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		sec, ok := s.file[n]
		switch {
		case ok && sec.Scope == ScopeBuild && !sec.allows(team):
			errs = append(errs, fmt.Errorf("secret %q: %w (%s)", n, ErrTeamNotAllowed, teamPhrase(team)))
		case ok && sec.Scope == ScopeBuild:
			sec.Value = bytes.Clone(sec.Value)
			sec.Teams = slices.Clone(sec.Teams)
			out = append(out, sec)
		case ok && sec.Scope == ScopeDeploy:
			errs = append(errs, fmt.Errorf("secret %q: %w", n, ErrDeployScope))
		case s.isAgent(n):
			errs = append(errs, fmt.Errorf("secret %q: %w", n, ErrAgentCredential))
		default:
			errs = append(errs, fmt.Errorf("secret %q: %w", n, ErrUnknownSecret))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("granting secrets: %w", errors.Join(errs...))
	}
	return out, nil
}

// Credential returns the value of a secrets file entry of any scope for the
// agent's own use (the registry gateway's upstream token): it never reaches
// a job, and, being in the store, it is redacted like every secret.
func (s *Store) Credential(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.file[name]
	if !ok {
		return nil, fmt.Errorf("secret %q: %w", name, ErrUnknownSecret)
	}
	return bytes.Clone(sec.Value), nil
}

// allows reports whether a job of team may be granted the secret.
func (sec Secret) allows(team string) bool {
	return sec.Teams == nil || (team != "" && slices.Contains(sec.Teams, team))
}

func teamPhrase(team string) string {
	if team == "" {
		return "the job has no team"
	}
	return fmt.Sprintf("the job's team is %q", team)
}

func (s *Store) isAgent(name string) bool {
	_, ok := s.agent[name]
	return ok
}

// Matcher returns the redaction matcher for every secret of every scope plus
// the agent credentials. It is built once and cached until a credential is
// added; share it between all the redactors of a job.
func (s *Store) Matcher() *Matcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.matcher == nil {
		var values [][]byte
		for _, sec := range s.file {
			values = append(values, sec.Value)
		}
		for _, sec := range s.agent {
			values = append(values, sec.Value)
		}
		s.matcher = NewMatcher(values)
	}
	return s.matcher
}

// Redactor returns a streaming redactor writing to w that hides every secret
// of the store (all scopes and agent credentials) and known token shapes.
func (s *Store) Redactor(w io.Writer) *Redactor {
	return s.Matcher().NewRedactor(w)
}
