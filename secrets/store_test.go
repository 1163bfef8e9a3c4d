package secrets

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes content to a 0600 file in a test-owned temp dir.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileResolvesEverySource(t *testing.T) {
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "deploy.key", "deploy-key-value\n")
	t.Setenv("CLEANROOM_TEST_NPM_TOKEN", "npm-read-token-1")
	path := writeFile(t, dir, "secrets.yaml", fmt.Sprintf(`# comment
secrets:
  - name: NPM_READ_TOKEN
    from: env:CLEANROOM_TEST_NPM_TOKEN
    scope: build
  - name: DEPLOY_KEY
    from: file:%s
    scope: deploy
  - name: INLINE_ONE
    value: "inline-value"
    scope: build
`, keyFile))
	st, err := LoadFile(path)
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if got, want := strings.Join(st.Names(), ","), "DEPLOY_KEY,INLINE_ONE,NPM_READ_TOKEN"; got != want {
		t.Errorf("Names = %s, want %s", got, want)
	}
	got, err := st.Grant("", []string{"NPM_READ_TOKEN", "INLINE_ONE"})
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	want := []Secret{
		{Name: "NPM_READ_TOKEN", Scope: ScopeBuild, Value: []byte("npm-read-token-1"), Source: "env:CLEANROOM_TEST_NPM_TOKEN"},
		{Name: "INLINE_ONE", Scope: ScopeBuild, Value: []byte("inline-value"), Source: "inline"},
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Scope != want[i].Scope || string(got[i].Value) != string(want[i].Value) || got[i].Source != want[i].Source {
			t.Errorf("grant[%d] = %#v %q, want %#v %q", i, got[i], got[i].Value, want[i], want[i].Value)
		}
	}
	// The deploy key (read from a file, trailing newline dropped) is redacted.
	if got := st.Matcher().RedactString("k=deploy-key-value;"); got != "k=[REDACTED];" {
		t.Errorf("deploy key not redacted: %q", got)
	}
}

func TestLoadFileRefusesGroupOrWorldReadableFile(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "s.yaml", "secrets: []\n")
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadFile(path)
			if !errors.Is(err, ErrInsecureFile) {
				t.Fatalf("LoadFile error = %v, want ErrInsecureFile", err)
			}
			for _, part := range []string{fmt.Sprintf("%04o", mode), "chmod 600 " + path} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not mention %q", err, part)
				}
			}
		})
	}
	path := writeFile(t, t.TempDir(), "s.yaml", "secrets: []\n")
	if _, err := LoadFile(path); err != nil {
		t.Errorf("0600 file refused: %v", err)
	}
}

func TestLoadFileRejectsBadEntriesNamingFileLineAndSecret(t *testing.T) {
	dir := t.TempDir()
	big := writeFile(t, dir, "big", strings.Repeat("x", MaxValueSize+1))
	empty := writeFile(t, dir, "empty", "\n")
	var many strings.Builder
	many.WriteString("secrets:\n")
	for i := range MaxEntries + 1 {
		fmt.Fprintf(&many, "  - {name: S%d, value: value-%d, scope: build}\n", i, i)
	}
	cases := []struct {
		name     string
		content  string
		sentinel error
		wants    []string // substrings after the file path
	}{
		{"syntax error", "secrets:\n  - name: A\n    value: [unclosed\n", ErrInvalid, []string{"line"}},
		{"not a list", "secrets: {a: b}\n", ErrInvalid, []string{":1:", "must be a list"}},
		{"unknown top-level key", "secrets: []\nextra: 1\n", ErrInvalid, []string{":2:", `"extra"`}},
		{"duplicate name", "secrets:\n  - {name: A, value: aaaaaaa, scope: build}\n  - {name: A, value: bbbbbbb, scope: build}\n", ErrInvalid, []string{":3:", `"A"`, "duplicate", "line 2"}},
		{"unknown scope", "secrets:\n  - name: TOK\n    value: x\n    scope: prod\n", ErrInvalid, []string{":2:", `"TOK"`, `"prod"`}},
		{"missing scope", "secrets:\n  - name: TOK\n    value: x\n", ErrInvalid, []string{":2:", `"TOK"`, "scope is missing"}},
		{"missing referenced file", "secrets:\n  - name: KEY\n    from: file:" + filepath.Join(dir, "nope") + "\n    scope: deploy\n", os.ErrNotExist, []string{":2:", `"KEY"`}},
		{"missing env var", "secrets:\n  - name: TOK\n    from: env:CLEANROOM_TEST_SURELY_UNSET\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, "CLEANROOM_TEST_SURELY_UNSET"}},
		{"unknown source kind", "secrets:\n  - name: TOK\n    from: vault:x\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, `"vault"`}},
		{"empty inline value", "secrets:\n  - name: TOK\n    value: \"\"\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, "empty"}},
		{"empty file value", "secrets:\n  - name: TOK\n    from: file:" + empty + "\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, "empty"}},
		{"invalid name", "secrets:\n  - name: 1BAD-NAME\n    value: x\n    scope: build\n", ErrInvalid, []string{":2:", `"1BAD-NAME"`, "environment variable name"}},
		{"both value and from", "secrets:\n  - name: TOK\n    value: x\n    from: env:HOME\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, "both"}},
		{"neither value nor from", "secrets:\n  - name: TOK\n    scope: build\n", ErrInvalid, []string{":2:", `"TOK"`, "neither"}},
		{"unknown entry key", "secrets:\n  - name: TOK\n    value: x\n    scop: build\n", ErrInvalid, []string{":2:", `"TOK"`, `"scop"`}},
		{"value too large", "secrets:\n  - name: BIG\n    from: file:" + big + "\n    scope: build\n", ErrTooLarge, []string{":2:", `"BIG"`}},
		{"teams on a deploy secret", "secrets:\n  - name: KEY\n    value: x\n    scope: deploy\n    teams: [web]\n", ErrInvalid, []string{":2:", `"KEY"`, "build-scope"}},
		{"empty teams", "secrets:\n  - name: TOK\n    value: x\n    scope: build\n    teams: []\n", ErrInvalid, []string{":2:", `"TOK"`, "empty"}},
		{"upper-case team", "secrets:\n  - name: TOK\n    value: x\n    scope: build\n    teams: [Web]\n", ErrInvalid, []string{":2:", `"TOK"`, `"Web"`}},
		{"teams not a list", "secrets:\n  - name: TOK\n    value: x\n    scope: build\n    teams: web\n", ErrInvalid, []string{":2:", `"TOK"`}},
		{"too many entries", many.String(), ErrTooMany, []string{fmt.Sprintf(":%d:", MaxEntries+2), "257 entries"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "s.yaml", tc.content)
			_, err := LoadFile(path)
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("LoadFile error = %v, want %v", err, tc.sentinel)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func testStore(t *testing.T) *Store {
	t.Helper()
	path := writeFile(t, t.TempDir(), "s.yaml", `secrets:
  - {name: NPM_READ_TOKEN, value: read-token-123, scope: build}
  - {name: OTHER_BUILD, value: other-build-456, scope: build}
  - {name: DEPLOY_KEY, value: deploy-key-789, scope: deploy}
  - {name: NPM_PUBLISH, value: publish-token-0, scope: deploy}
`)
	st, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st.AddAgentCredential("RUNNER_TOKEN", []byte("runner-token-abc"))
	return st
}

func TestGrantOnlyGivesBuildScope(t *testing.T) {
	st := testStore(t)
	cases := []struct {
		name      string
		ask       []string
		granted   []string
		sentinels []error
		mentions  []string
	}{
		{"build secrets", []string{"NPM_READ_TOKEN", "OTHER_BUILD"}, []string{"NPM_READ_TOKEN", "OTHER_BUILD"}, nil, nil},
		{"nothing asked", nil, nil, nil, nil},
		{"deploy secret", []string{"DEPLOY_KEY"}, nil, []error{ErrDeployScope}, []string{"DEPLOY_KEY"}},
		{"agent credential", []string{"RUNNER_TOKEN"}, nil, []error{ErrAgentCredential}, []string{"RUNNER_TOKEN"}},
		{"unknown name", []string{"NOPE"}, nil, []error{ErrUnknownSecret}, []string{"NOPE"}},
		{"every offender reported at once", []string{"NPM_READ_TOKEN", "DEPLOY_KEY", "NPM_PUBLISH", "NOPE", "RUNNER_TOKEN"}, nil,
			[]error{ErrDeployScope, ErrUnknownSecret, ErrAgentCredential}, []string{"DEPLOY_KEY", "NPM_PUBLISH", "NOPE", "RUNNER_TOKEN"}},
		{"too many names", make([]string, MaxGrant+1), nil, []error{ErrTooMany}, []string{"65"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := st.Grant("", tc.ask)
			for _, s := range tc.sentinels {
				if !errors.Is(err, s) {
					t.Errorf("error %v is not %v", err, s)
				}
			}
			for _, m := range tc.mentions {
				if err == nil || !strings.Contains(err.Error(), m) {
					t.Errorf("error %v does not name %s", err, m)
				}
			}
			if tc.sentinels == nil && err != nil {
				t.Fatalf("Grant: %v", err)
			}
			if tc.sentinels != nil && got != nil {
				t.Errorf("refused grant still returned %v", got)
			}
			var names []string
			for _, s := range got {
				names = append(names, s.Name)
				if s.Scope != ScopeBuild {
					t.Errorf("granted %v", s)
				}
			}
			if strings.Join(names, ",") != strings.Join(tc.granted, ",") {
				t.Errorf("granted %v, want %v", names, tc.granted)
			}
		})
	}
}

// A build secret with teams is granted only to a job of one of them: a job
// of another team, or of none (admin-submitted, or a token without a team),
// is refused, naming the secret and the job's team. A secret without teams
// goes to every job.
func TestGrantRestrictsTeamSecretsToTheirTeams(t *testing.T) {
	st, err := LoadFile(writeFile(t, t.TempDir(), "s.yaml", `secrets:
  - {name: WEB_TOKEN, value: web-token-123, scope: build, teams: [web, api]}
  - {name: SHARED, value: shared-456789, scope: build}
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		team    string
		ask     []string
		granted string
		refused string // a substring of the error; "" for a grant
	}{
		{"web", []string{"WEB_TOKEN", "SHARED"}, "WEB_TOKEN,SHARED", ""},
		{"api", []string{"WEB_TOKEN"}, "WEB_TOKEN", ""},
		{"ops", []string{"SHARED"}, "SHARED", ""},
		{"", []string{"SHARED"}, "SHARED", ""},
		{"ops", []string{"SHARED", "WEB_TOKEN"}, "", `secret "WEB_TOKEN": secret not available to the job's team (the job's team is "ops")`},
		{"", []string{"WEB_TOKEN"}, "", `secret "WEB_TOKEN": secret not available to the job's team (the job has no team)`},
		{"we", []string{"WEB_TOKEN"}, "", `"WEB_TOKEN"`},
	}
	for _, tc := range cases {
		t.Run(tc.team+":"+strings.Join(tc.ask, ","), func(t *testing.T) {
			got, err := st.Grant(tc.team, tc.ask)
			if tc.refused != "" {
				if !errors.Is(err, ErrTeamNotAllowed) || !strings.Contains(err.Error(), tc.refused) || got != nil {
					t.Fatalf("Grant = %v, %v; want a refusal containing %s", got, err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, s := range got {
				names = append(names, s.Name)
			}
			if strings.Join(names, ",") != tc.granted {
				t.Fatalf("granted %v, want %s", names, tc.granted)
			}
		})
	}
}

func TestStoreRedactorHidesEveryScopeAndAgentCredentials(t *testing.T) {
	st := testStore(t)
	in := "read-token-123 deploy-key-789 runner-token-abc publish-token-0 ok\n"
	var out strings.Builder
	r := st.Redactor(&out)
	if _, err := r.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "[REDACTED] [REDACTED] [REDACTED] [REDACTED] ok\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	// A credential added later reaches matchers built afterwards.
	st.AddAgentCredential("SIGNING_KEY", []byte("signing-key-xyz"))
	if got := st.Matcher().RedactString("sig signing-key-xyz"); got != "sig [REDACTED]" {
		t.Errorf("new agent credential not redacted: %q", got)
	}
}

func TestSecretNeverPrintsItsValue(t *testing.T) {
	s := Secret{Name: "TOK", Scope: ScopeBuild, Value: []byte("very-secret-value"), Source: "inline"}
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{s.String(), fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s), fmt.Sprint([]Secret{s}), string(js)} {
		if strings.Contains(text, "very-secret-value") || !strings.Contains(text, "TOK") {
			t.Errorf("printed form %q leaks the value or loses the name", text)
		}
	}
}

// The agent reads an upstream credential of any scope; an unknown name is
// an error, not an empty token.
func TestCredentialReadsAnyScopeForTheAgent(t *testing.T) {
	st := testStore(t)
	for _, name := range []string{"NPM_READ_TOKEN", "DEPLOY_KEY"} {
		if v, err := st.Credential(name); err != nil || len(v) == 0 {
			t.Errorf("Credential(%s) = %q, %v", name, v, err)
		}
	}
	if _, err := st.Credential("NOPE"); !errors.Is(err, ErrUnknownSecret) {
		t.Errorf("unknown: err = %v", err)
	}
}
