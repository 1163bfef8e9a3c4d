package ignore

import (
	"strings"
	"testing"
)

func TestMatchFollowsGitignore(t *testing.T) {
	type probe struct {
		path    string
		dir     bool
		ignored bool
	}
	tests := []struct {
		name   string
		files  map[string]string // source -> content, read in this order
		order  []string
		probes []probe
	}{
		{"a name matches at any depth", map[string]string{".gitignore": "*.log\n"}, nil, []probe{
			{"a.log", false, true}, {"x/y/a.log", false, true}, {"a.log.txt", false, false}, {"logs", true, false}}},
		{"comments, blanks and escapes", map[string]string{".gitignore": "# c\n\n\\#hash\n\\!bang\ntrail\\ \nsp   \n"}, nil, []probe{
			{"# c", false, false}, {"#hash", false, true}, {"!bang", false, true}, {"trail ", false, true}, {"sp", false, true}, {"trail", false, false}}},
		{"a trailing slash matches directories only", map[string]string{".gitignore": "dist/\n"}, nil, []probe{
			{"dist", true, true}, {"dist", false, false}, {"pkg/dist", true, true}}},
		{"a leading slash anchors", map[string]string{".gitignore": "/build\n"}, nil, []probe{
			{"build", true, true}, {"build", false, true}, {"pkg/build", true, false}}},
		{"a middle slash anchors", map[string]string{".gitignore": "doc/*.html\n"}, nil, []probe{
			{"doc/a.html", false, true}, {"x/doc/a.html", false, false}, {"doc/sub/a.html", false, false}}},
		{"negation re-includes, last rule wins", map[string]string{".gitignore": "*.env\n!keep.env\n"}, nil, []probe{
			{"a.env", false, true}, {"keep.env", false, false}, {"x/keep.env", false, false}}},
		{"leading **/", map[string]string{".gitignore": "**/cache/tmp\n"}, nil, []probe{
			{"cache/tmp", true, true}, {"a/b/cache/tmp", false, true}, {"a/cache/x/tmp", false, false}}},
		{"trailing /** matches inside only", map[string]string{".gitignore": "out/**\n"}, nil, []probe{
			{"out", true, false}, {"out/a", false, true}, {"out/a/b", false, true}}},
		{"middle /**/ matches zero or more directories", map[string]string{".gitignore": "a/**/b\n"}, nil, []probe{
			{"a/b", false, true}, {"a/x/b", false, true}, {"a/x/y/b", false, true}, {"c/a/b", false, false}}},
		{"other ** are single stars", map[string]string{".gitignore": "foo**bar\n"}, nil, []probe{
			{"fooXbar", false, true}, {"foo/bar", false, false}}},
		{"character classes, negated with !", map[string]string{".gitignore": "[ab].txt\n[!xy].md\n"}, nil, []probe{
			{"a.txt", false, true}, {"c.txt", false, false}, {"z.md", false, true}, {"x.md", false, false}}},
		{"an invalid pattern is skipped", map[string]string{".gitignore": "[abc\nok\n"}, nil, []probe{
			{"[abc", false, false}, {"ok", false, true}}},
		{"a nested file applies below its directory and overrides the root", map[string]string{
			".gitignore": "*.gen.js\n", "web/.gitignore": "!*.gen.js\n/local\n"}, []string{".gitignore", "web/.gitignore"}, []probe{
			{"a.gen.js", false, true}, {"web/a.gen.js", false, false}, {"web/x/a.gen.js", false, false},
			{"web/local", false, true}, {"local", false, false}, {"other/web/local", false, false}}},
		{"a nested pattern does not match its own directory's siblings", map[string]string{"web/.gitignore": "*.tmp\n"}, nil, []probe{
			{"a.tmp", false, false}, {"webx/a.tmp", false, false}, {"web/a.tmp", false, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			order := tt.order
			if order == nil {
				for src := range tt.files {
					order = append(order, src)
				}
			}
			var m Matcher
			for _, src := range order {
				rules, err := Parse(src, strings.NewReader(tt.files[src]))
				if err != nil {
					t.Fatal(err)
				}
				m.Add(rules...)
			}
			for _, p := range tt.probes {
				if got, by := m.Match(p.path, p.dir); got != p.ignored {
					t.Errorf("Match(%q, dir=%v) = %v (rule %v), want %v", p.path, p.dir, got, by, p.ignored)
				}
			}
		})
	}
}

func TestMatchNamesTheRule(t *testing.T) {
	rules, _ := Parse("web/.gitignore", strings.NewReader("# x\n\ndist/\n"))
	var m Matcher
	m.Add(rules...)
	_, by := m.Match("web/dist", true)
	if by == nil || by.String() != "web/.gitignore:3: dist/" {
		t.Fatalf("rule = %v, want web/.gitignore:3: dist/", by)
	}
}
