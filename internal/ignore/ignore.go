// Package ignore owns the gitignore pattern language: it parses .gitignore
// style files (also used for .cleanroomignore) and answers whether a path
// below the project root is ignored, and by which line. Walking a tree and
// deciding what else to leave out is the caller's (internal/sourcepack).
//
// Semantics follow gitignore(5): blank lines and lines starting with "#"
// are skipped; "!" re-includes; a trailing "/" matches directories only; a
// pattern with a "/" at its start or in its middle is anchored to the
// directory of the file that holds it, one without matches a name at any
// depth below that directory; "*", "?" and "[...]" do not match "/";
// "**/" at the start, "/**" at the end and "/**/" in the middle match any
// number of directories; "\" escapes the next character; trailing spaces
// are dropped unless escaped. A file cannot be re-included once a
// directory above it is ignored: callers walk the tree and do not descend
// into an ignored directory.
package ignore

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// Rule is one pattern line.
type Rule struct {
	// Source is the file it came from (relative to the root, slash
	// separated) and Line its line number, for "left out by …" messages.
	Source string
	Line   int
	// Pattern is the line as written (trailing spaces dropped).
	Pattern string

	base    string   // directory of Source ("" for the root)
	negate  bool     // "!": re-includes
	dirOnly bool     // trailing "/"
	segs    []string // path.Match patterns, "**" for any directories
}

// String is "source:line: pattern".
func (r *Rule) String() string { return fmt.Sprintf("%s:%d: %s", r.Source, r.Line, r.Pattern) }

// Negated reports whether the rule re-includes what it matches.
func (r *Rule) Negated() bool { return r.negate }

// Parse reads the patterns of the file source (its path relative to the
// root, slash separated: "web/.gitignore"). Patterns apply below the
// file's directory. A line that is not a valid pattern (an unclosed "[")
// is skipped, as git skips it.
func Parse(source string, r io.Reader) ([]Rule, error) {
	base := path.Dir(source)
	if base == "." {
		base = ""
	}
	return parse(source, base, r)
}

// ParseRoot parses rules that apply from the top of the tree wherever
// their file lives (git's .git/info/exclude).
func ParseRoot(source string, r io.Reader) ([]Rule, error) {
	return parse(source, "", r)
}

func parse(source, base string, r io.Reader) ([]Rule, error) {
	var rules []Rule
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if rule, ok := parseLine(sc.Text()); ok {
			rule.Source, rule.Line, rule.base = source, n, base
			rules = append(rules, rule)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", source, err)
	}
	return rules, nil
}

func parseLine(line string) (Rule, bool) {
	line = strings.TrimSuffix(line, "\r")
	line = trimTrailingSpaces(line)
	if line == "" || line[0] == '#' {
		return Rule{}, false
	}
	rule := Rule{Pattern: line}
	p := line
	if p[0] == '!' {
		rule.negate = true
		p = p[1:]
	}
	if strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "\\/") {
		rule.dirOnly = true
		p = strings.TrimRight(p, "/")
	}
	if p == "" {
		return Rule{}, false
	}
	anchored := strings.Contains(p, "/")
	p = strings.TrimPrefix(p, "/")
	for _, s := range strings.Split(p, "/") {
		switch {
		case s == "":
			continue // "a//b" is "a/b"
		case s == "**":
		case strings.Contains(s, "**"):
			s = collapseStars(s) // "a**b": ordinary asterisks
		}
		s = strings.ReplaceAll(s, "[!", "[^")
		if s != "**" {
			if _, err := path.Match(s, ""); err != nil {
				return Rule{}, false
			}
		}
		rule.segs = append(rule.segs, s)
	}
	if !anchored {
		rule.segs = append([]string{"**"}, rule.segs...)
	}
	return rule, true
}

// trimTrailingSpaces drops trailing spaces that are not escaped with "\".
func trimTrailingSpaces(s string) string {
	for strings.HasSuffix(s, " ") && !strings.HasSuffix(s, "\\ ") {
		s = s[:len(s)-1]
	}
	return s
}

func collapseStars(s string) string {
	for strings.Contains(s, "**") {
		s = strings.ReplaceAll(s, "**", "*")
	}
	return s
}

// Match reports whether the rule matches rel (slash separated, relative to
// the root), which is a directory when isDir.
func (r *Rule) Match(rel string, isDir bool) bool {
	if r.dirOnly && !isDir {
		return false
	}
	if r.base != "" {
		if !strings.HasPrefix(rel, r.base+"/") {
			return false
		}
		rel = rel[len(r.base)+1:]
	}
	return matchSegs(r.segs, strings.Split(rel, "/"))
}

func matchSegs(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	if pat[0] == "**" {
		if len(pat) == 1 {
			return len(name) > 0 // "a/**" matches what is inside a, not a
		}
		for i := 0; i <= len(name); i++ {
			if matchSegs(pat[1:], name[i:]) {
				return true
			}
		}
		return false
	}
	if len(name) == 0 {
		return false
	}
	ok, _ := path.Match(pat[0], name[0])
	return ok && matchSegs(pat[1:], name[1:])
}

// Matcher holds the rules of every ignore file read so far, in order: a
// later rule wins over an earlier one, so rules of a deeper directory's
// file, added after its parents', take precedence.
type Matcher struct {
	rules []Rule
}

// Add appends rules.
func (m *Matcher) Add(rules ...Rule) { m.rules = append(m.rules, rules...) }

// Match returns the last rule matching rel and whether that rule ignores
// it (a "!" rule re-includes). nil: no rule matched.
func (m *Matcher) Match(rel string, isDir bool) (ignored bool, by *Rule) {
	for i := len(m.rules) - 1; i >= 0; i-- {
		if m.rules[i].Match(rel, isDir) {
			return !m.rules[i].negate, &m.rules[i]
		}
	}
	return false, nil
}
