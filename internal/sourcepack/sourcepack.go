// Package sourcepack owns choosing what of a project directory is uploaded
// as a job's source, and why the rest is left out: node_modules and .git
// always; what .gitignore files (at every level) and a .cleanroomignore at
// the root ignore; environment files (.env, .env.*) and .npmrc files that
// hold credentials, whatever the ignore files say; and stale build outputs
// named in the job's artifacts. Writing the archive is internal/tarball's;
// the rule language is internal/ignore's.
package sourcepack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cleanroom-ci/cleanroom/internal/ignore"
	"github.com/cleanroom-ci/cleanroom/internal/tarball"
)

// IgnoreFile is the root file of cleanroom-only ignore rules (gitignore
// syntax), for what git keeps but a build does not need.
const IgnoreFile = ".cleanroomignore"

// Entry is one path of the project (slash separated, relative to the
// root; directories end in "/").
type Entry struct {
	Path string `json:"path"`
	// Size is a regular file's size in bytes.
	Size int64 `json:"size,omitempty"`
	// Reason says why it is left out ("" for an included entry).
	Reason string `json:"reason,omitempty"`
}

// Plan is what Select decided.
type Plan struct {
	Dir      string
	Included []Entry
	// Left are the paths left out; a left-out directory stands for all it
	// holds.
	Left []Entry
	// Files and Bytes count the regular files included and their sizes.
	Files int
	Bytes int64
}

// keptEnvFiles are the environment files that hold placeholders by
// convention and are meant to be committed; every other .env* is left out.
var keptEnvFiles = map[string]bool{".env.example": true, ".env.sample": true, ".env.template": true}

// Select walks dir and decides every entry. artifacts are the job spec's
// artifact patterns (relative to the workspace, as the agent globs them):
// what they name is the build's output, so a local copy is stale and left
// out.
func Select(dir string, artifacts []string) (*Plan, error) {
	p := &Plan{Dir: dir}
	var m rules
	if err := addRules(&m.cleanroom, dir, IgnoreFile); err != nil {
		return nil, err
	}
	var arts []string
	for _, a := range artifacts {
		if c := path.Clean(strings.TrimSuffix(a, "/")); c != "." && c != "" {
			arts = append(arts, c)
		}
	}
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, full)
		if err != nil {
			return err
		}
		if rel == "." {
			// .git/info/exclude first: a .gitignore rule takes precedence,
			// as in git.
			if err := addRootRules(&m.git, dir, ".git/info/exclude"); err != nil {
				return err
			}
			return addRules(&m.git, dir, ".gitignore")
		}
		rel = filepath.ToSlash(rel)
		name := rel
		if d.IsDir() {
			name += "/"
		}
		if reason := leaveOut(&m, full, rel, d, arts); reason != "" {
			p.Left = append(p.Left, Entry{Path: name, Reason: reason})
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		e := Entry{Path: name}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			e.Size = fi.Size()
			p.Files++
			p.Bytes += e.Size
		}
		p.Included = append(p.Included, e)
		if d.IsDir() {
			return addRules(&m.git, dir, rel+"/.gitignore")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	return p, nil
}

// leaveOut says why rel is left out, or "".
func leaveOut(m *rules, full, rel string, d fs.DirEntry, arts []string) string {
	base := d.Name()
	switch {
	case d.IsDir() && (base == "node_modules" || base == ".git"):
		return "always left out"
	case !d.IsDir() && d.Type()&fs.ModeSymlink == 0 && !d.Type().IsRegular():
		return "not a file, directory or symlink"
	case !d.IsDir() && envFile(base):
		return "environment file (may hold secrets; .env.example, .env.sample and .env.template are kept)"
	}
	for _, a := range arts {
		if ok, _ := path.Match(a, rel); ok {
			return "build output named in the spec's artifacts (" + a + "): the build makes it afresh"
		}
	}
	if ignored, by := m.match(rel, d.IsDir()); ignored {
		return "ignored by " + by.String()
	}
	if npmrcLike(base) {
		if d.Type()&fs.ModeSymlink != 0 {
			return "a symlinked npm or yarn config (its target is not checked for credentials)"
		}
		if line := credentialLine(full); line != "" {
			return base + " holds credentials (" + line + "); the runner provides the registry's"
		}
	}
	return ""
}

// envFile reports whether a file name is an environment file that may hold
// secrets: .env and its variants in any case (.env.local, .env-prod,
// .env_ci, .envrc, prod.env), but not the committed placeholders.
func envFile(base string) bool {
	lb := strings.ToLower(base)
	if keptEnvFiles[lb] {
		return false
	}
	return lb == ".env" || lb == ".envrc" || strings.HasPrefix(lb, ".env.") || strings.HasPrefix(lb, ".env-") ||
		strings.HasPrefix(lb, ".env_") || strings.HasSuffix(lb, ".env")
}

// npmrcLike reports whether a file name is an npm or yarn config whose
// content is checked for credentials.
func npmrcLike(base string) bool {
	lb := strings.ToLower(base)
	return strings.Contains(lb, "npmrc") || strings.HasPrefix(lb, ".yarnrc")
}

// rules are the ignore files read so far. A rule of .cleanroomignore that
// matches decides, so it can re-include ("!generated/") what git ignores;
// otherwise the .gitignore files decide, the deepest matching rule last.
type rules struct{ cleanroom, git ignore.Matcher }

func (r *rules) match(rel string, isDir bool) (bool, *ignore.Rule) {
	if ignored, by := r.cleanroom.Match(rel, isDir); by != nil {
		return ignored, by
	}
	return r.git.Match(rel, isDir)
}

// addRules adds the rules of the ignore file rel (below dir), if any.
func addRules(m *ignore.Matcher, dir, rel string) error {
	return readRules(m, dir, rel, ignore.Parse)
}

// addRootRules adds the rules of rel that apply from dir's top (git's
// .git/info/exclude), if the file exists.
func addRootRules(m *ignore.Matcher, dir, rel string) error {
	return readRules(m, dir, rel, ignore.ParseRoot)
}

func readRules(m *ignore.Matcher, dir, rel string, parse func(string, io.Reader) ([]ignore.Rule, error)) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("reading %s: %w", rel, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return err
	}
	rules, err := parse(rel, io.LimitReader(f, 1<<20))
	if err != nil {
		return err
	}
	m.Add(rules...)
	return nil
}

// credentialLine returns where an npm or yarn config holds a credential
// ("line 3: //npm.example/:_authToken"; never the value), or "". Keys are
// unquoted as npm's ini parser does; a token, password, inline key or
// certificate, a URL with a user or password, and a line too long to read
// all count. A value that is only an environment reference (${NPM_TOKEN})
// is not a credential.
func credentialLine(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 1
	for ; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			key, val, ok = strings.Cut(line, ":") // .yarnrc.yml: "npmAuthToken: …"
			if !ok {
				continue
			}
		}
		key = strings.Trim(strings.TrimSpace(key), `"'`)
		val = strings.Trim(strings.TrimSpace(val), `"'`)
		if isEnvRef(val) || val == "" {
			continue
		}
		lk := strings.ToLower(key)
		short := lk[strings.LastIndex(lk, ":")+1:]
		switch {
		case short == "_authtoken", short == "_auth", short == "_password", short == "certfile", short == "keyfile",
			short == "key", short == "cert", short == "npmauthtoken", short == "npmauthident",
			strings.HasPrefix(lk, "//") && short != "username" && short != "email" && short != "always-auth",
			urlWithUserinfo(val):
			return fmt.Sprintf("line %d: %s", n, key)
		}
	}
	if sc.Err() != nil {
		return fmt.Sprintf("line %d: unreadable (%v)", n, sc.Err())
	}
	return ""
}

// urlWithUserinfo reports whether v is a URL carrying a user or password
// (registry=https://alice:secret@host/, proxy=http://u:p@proxy).
func urlWithUserinfo(v string) bool {
	u, err := url.Parse(v)
	return err == nil && u.User != nil && u.Host != ""
}

func isEnvRef(v string) bool {
	return strings.HasPrefix(v, "${") && strings.HasSuffix(v, "}") && strings.Count(v, "$") == 1
}

// Write writes the included entries as tar.gz to w: what Select listed,
// and nothing created since.
func (p *Plan) Write(w io.Writer) error {
	keep := make(map[string]bool, len(p.Included))
	for _, e := range p.Included {
		keep[strings.TrimSuffix(e.Path, "/")] = true
	}
	return tarball.WriteDir(w, p.Dir, tarball.Options{Gzip: true, Include: func(rel string) bool { return keep[rel] }})
}
