package api_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
)

func TestSpecParsesTheSameFromYAMLAndJSON(t *testing.T) {
	yml := `
image: cleanroom.local/node:22
build: npm run build
artifacts: [dist/**]
secrets: [NPM_TOKEN]
timeout: 10m
resources: {memory: 2GiB, cpus: 2, pids: 512, disk: 4g}
labels: {arch: amd64}
install_scripts: {allow: [esbuild], all: false}
network: {extra: ["registry.lab:4873"], on_violation: kill}
`
	var fromYAML api.JobSpec
	if err := yaml.Unmarshal([]byte(yml), &fromYAML); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(fromYAML)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON api.JobSpec
	if err := json.Unmarshal(b, &fromJSON); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	if fromJSON.Timeout.D() != 10*time.Minute || fromJSON.Resources.Memory != 2<<30 || fromJSON.Resources.Disk != 4<<30 ||
		fromJSON.Build.Script != "npm run build" || fromJSON.Labels["arch"] != "amd64" || fromJSON.Network.OnViolation != "kill" {
		t.Fatalf("round trip lost fields: %s", b)
	}
	if err := fromJSON.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestBuildAcceptsScriptOrArgv(t *testing.T) {
	tests := []struct {
		in         string
		wantScript string
		wantArgv   []string
		wantErr    bool
	}{
		{`"npm test"`, "npm test", nil, false},
		{`["npm","run","build"]`, "", []string{"npm", "run", "build"}, false},
		{`{"x":1}`, "", nil, true},
	}
	for _, tc := range tests {
		var b api.Build
		err := json.Unmarshal([]byte(tc.in), &b)
		if (err != nil) != tc.wantErr || b.Script != tc.wantScript || strings.Join(b.Argv, " ") != strings.Join(tc.wantArgv, " ") {
			t.Errorf("%s: got %+v, %v", tc.in, b, err)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want api.ByteSize
		err  bool
	}{
		{"512MiB", 512 << 20, false}, {"2g", 2 << 30, false}, {"1GB", 1e9, false}, {"1024", 1024, false},
		{"1.5GiB", 3 << 29, false}, {"lots", 0, true}, {"-1m", 0, true},
		{"1Gi", 1 << 30, false}, {"64k", 64 << 10, false}, {"1MB", 1e6, false}, {"12q", 0, true}, {"9999999t", 0, true},
	}
	for _, tc := range tests {
		got, err := api.ParseByteSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestResourcesOverNamesEveryFieldThatDoesNotFit(t *testing.T) {
	capacity := api.Resources{Memory: 2 << 30, CPUs: 2, PIDs: 100, Disk: 1 << 30}
	if over := (api.Resources{}).Over(capacity); len(over) != 0 {
		t.Fatalf("defaults do not fit: %v", over)
	}
	over := api.Resources{Memory: 4 << 30, CPUs: 2, PIDs: 101, Disk: 1 << 30}.Over(capacity)
	if len(over) != 2 || over[0] != "resources.memory 4GiB > 2GiB" || over[1] != "resources.pids 101 > 100" {
		t.Fatalf("over = %q", over)
	}
	if over := (api.Resources{Memory: 1 << 40}).Over(api.Resources{}); len(over) != 0 {
		t.Fatalf("unknown capacity refused: %v", over)
	}
}

func TestValidateReportsEveryFieldAtOnce(t *testing.T) {
	s := api.JobSpec{Timeout: api.Duration(-time.Second), Secrets: []string{"a b"}, Network: api.NetworkSpec{OnViolation: "x"}, MinReleaseAge: api.Duration(-time.Hour)}
	err := s.Validate()
	var fe api.FieldErrors
	if !errors.As(err, &fe) || len(fe) != 5 {
		t.Fatalf("got %v, want 5 field errors (build, timeout, min_release_age, secrets[0], network.on_violation)", err)
	}
}

func TestErrorMatchesSentinelsByStatus(t *testing.T) {
	tests := []struct {
		status int
		want   error
	}{{404, api.ErrNotFound}, {401, api.ErrUnauthorized}, {409, api.ErrConflict}, {400, api.ErrInvalid}, {413, api.ErrTooLarge}, {403, api.ErrForbidden}}
	for _, tc := range tests {
		if err := error(&api.Error{Status: tc.status}); !errors.Is(err, tc.want) {
			t.Errorf("status %d does not match %v", tc.status, tc.want)
		}
	}
	if api.Retryable(&api.Error{Status: 409}) || !api.Retryable(&api.Error{Status: 503}) || !api.Retryable(errors.New("connection refused")) {
		t.Error("Retryable misclassifies")
	}
}

func TestStatusOfAndErrorFromMapEveryClassBothWays(t *testing.T) {
	tests := []struct {
		class  error
		status int
	}{
		{api.ErrInvalid, http.StatusBadRequest},
		{api.ErrUnauthorized, http.StatusUnauthorized},
		{api.ErrForbidden, http.StatusForbidden},
		{api.ErrNotFound, http.StatusNotFound},
		{api.ErrConflict, http.StatusConflict},
		{api.ErrTooLarge, http.StatusRequestEntityTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.class.Error(), func(t *testing.T) {
			if got := api.StatusOf(tc.class); got != tc.status {
				t.Errorf("StatusOf(class) = %d, want %d", got, tc.status)
			}
			if got := api.ErrorFrom(tc.status); got != tc.class {
				t.Errorf("ErrorFrom(%d) = %v, want %v", tc.status, got, tc.class)
			}
			if got := api.StatusOf(api.ErrorFrom(tc.status)); got != tc.status {
				t.Errorf("StatusOf(ErrorFrom(%d)) = %d", tc.status, got)
			}
			if got := api.ErrorFrom(api.StatusOf(tc.class)); got != tc.class {
				t.Errorf("ErrorFrom(StatusOf(%v)) = %v", tc.class, got)
			}
			wrapped := fmt.Errorf("looking up x: %w", tc.class)
			if got := api.StatusOf(wrapped); got != tc.status {
				t.Errorf("StatusOf(wrapped) = %d, want %d", got, tc.status)
			}
			sentinel := api.WithClass(errors.New("specific"), tc.class)
			err := fmt.Errorf("doing y: %w", sentinel)
			if got := api.StatusOf(err); got != tc.status || !errors.Is(err, sentinel) || !errors.Is(err, tc.class) || err.Error() != "doing y: specific" {
				t.Errorf("WithClass: status %d, message %q, matches sentinel %t, class %t", got, err, errors.Is(err, sentinel), errors.Is(err, tc.class))
			}
			answer := error(&api.Error{Status: tc.status, Message: "from the wire"})
			if !errors.Is(answer, tc.class) || api.StatusOf(answer) != tc.status {
				t.Errorf("an answer with status %d does not carry its class", tc.status)
			}
			for _, other := range tests {
				if other.class != tc.class && errors.Is(answer, other.class) {
					t.Errorf("an answer with status %d also matches %v", tc.status, other.class)
				}
			}
		})
	}
}

func TestStatusOfErrorsOfNoClass(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, http.StatusOK},
		{"plain error", errors.New("disk on fire"), http.StatusInternalServerError},
		{"field errors", api.FieldErrors{{Field: "name", Message: "required"}}, http.StatusBadRequest},
		{"wrapped answer keeps its status", fmt.Errorf("calling: %w", &api.Error{Status: http.StatusServiceUnavailable}), http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		if got := api.StatusOf(tc.err); got != tc.want {
			t.Errorf("%s: StatusOf = %d, want %d", tc.name, got, tc.want)
		}
	}
	for _, status := range []int{http.StatusOK, http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway} {
		if err := api.ErrorFrom(status); err != nil {
			t.Errorf("ErrorFrom(%d) = %v, want no class", status, err)
		}
	}
}

func TestParseDurationTakesDaysForRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "1.5d": 36 * time.Hour, "10m": 10 * time.Minute, "30": 30 * time.Second, "": 0} {
		if got, err := api.ParseDuration(in); err != nil || got.D() != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := api.ParseDuration("soon"); err == nil {
		t.Error(`ParseDuration("soon") accepted`)
	}
}

func TestRequestsValidateThemselves(t *testing.T) {
	key := make([]byte, 32)
	sha := strings.Repeat("a", 64)
	tests := []struct {
		name       string
		req        interface{ Validate() error }
		wantFields []string
	}{
		{"register ok", &api.RegisterRequest{Name: "r-1", PublicKey: key, Labels: map[string]string{"arch": "amd64"}, Concurrency: 2}, nil},
		{"register everything wrong", &api.RegisterRequest{Name: "bad name", PublicKey: key[:8], Labels: map[string]string{"-x": "v"}, Concurrency: 257},
			[]string{"name", "public_key", "labels.-x", "concurrency"}},
		{"token default kind", &api.TokenRequest{}, nil},
		{"token everything wrong", &api.TokenRequest{Kind: "admin", Expires: -1, Uses: -1}, []string{"kind", "expires", "uses"}},
		{"claim ok", &api.ClaimRequest{Slots: 256}, nil},
		{"claim no slots", &api.ClaimRequest{}, []string{"slots"}},
		{"result ok", &api.ResultRequest{State: api.StateFailed}, nil},
		{"result not final", &api.ResultRequest{State: api.StateRunning}, []string{"state"}},
		{"result with class", &api.ResultRequest{State: api.StateFailed, Class: api.ClassRefused}, nil},
		{"result unknown class", &api.ResultRequest{State: api.StateFailed, Class: "oops"}, []string{"class"}},
		{"result succeeded with class", &api.ResultRequest{State: api.StateSucceeded, Class: api.ClassBuild}, []string{"class"}},
		{"egress filter ok", &api.EgressFilter{Verdict: api.VerdictDeny}, nil},
		{"egress filter verdict", &api.EgressFilter{Verdict: "maybe"}, []string{"verdict"}},
		{"artifact ok", &api.Artifact{Name: "dist/app.js", Kind: api.KindFile, SHA256: sha}, nil},
		{"artifact everything wrong", &api.Artifact{Name: "../../etc/passwd", Kind: "x", SHA256: "abc"}, []string{"name", "kind", "sha256"}},
		{"artifact absolute", &api.Artifact{Name: "/etc/passwd", Kind: api.KindSBOM, SHA256: sha}, []string{"name"}},
		{"artifact non-ASCII ok", &api.Artifact{Name: "dist/café ✓.js", Kind: api.KindFile, SHA256: sha}, nil},
		{"artifact ESC", &api.Artifact{Name: "dist/\x1b[2Japp.js", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact newline", &api.Artifact{Name: "dist/a\nb", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact tab", &api.Artifact{Name: "dist/a\tb", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact DEL", &api.Artifact{Name: "dist/a\x7fb", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact C1 CSI", &api.Artifact{Name: "dist/a\u009bb", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact bidi override", &api.Artifact{Name: "dist/evil\u202esj.exe", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"artifact bidi isolate", &api.Artifact{Name: "dist/a\u2066b", Kind: api.KindFile, SHA256: sha}, []string{"name"}},
		{"submit ok", &api.SubmitRequest{Spec: api.JobSpec{Build: api.Build{Script: "npm test"}},
			Source: api.Source{Kind: api.SourceGit, URL: "https://git.lab/x", Commit: strings.Repeat("0", 40)}}, nil},
		{"submit prefixes the spec", &api.SubmitRequest{Spec: api.JobSpec{Timeout: -1}, Source: api.Source{Kind: api.SourceGit, URL: "-x", Commit: "abc"}},
			[]string{"spec.build", "spec.timeout", "source.url", "source.commit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Validate()
			var fe api.FieldErrors
			if len(tc.wantFields) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.As(err, &fe) || !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("got %v, want field errors", err)
			}
			var got []string
			for _, f := range fe {
				got = append(got, f.Field)
			}
			if strings.Join(got, ",") != strings.Join(tc.wantFields, ",") {
				t.Fatalf("fields = %v, want %v", got, tc.wantFields)
			}
		})
	}
}

func TestPrefixFields(t *testing.T) {
	got := api.PrefixFields("spec.", api.FieldErrors{{Field: "timeout", Message: "must not be negative"}})
	if len(got) != 1 || got[0].Field != "spec.timeout" || got[0].Message != "must not be negative" {
		t.Errorf("field errors: %v", got)
	}
	got = api.PrefixFields("spec.", errors.New("unexpected EOF"))
	if len(got) != 1 || got[0].Field != "spec" || got[0].Message != "unexpected EOF" {
		t.Errorf("plain error: %v", got)
	}
}

func TestGitSourceURLs(t *testing.T) {
	commit := strings.Repeat("a", 40)
	tests := []struct {
		url  string
		want string // part of the message; "" = accepted
	}{
		{"https://git.corp.example/team/app.git", ""},
		{"https://git.corp.example:8443/app.git", ""},
		{"HTTPS://git.corp.example/app", ""},
		{"https://ci:s3cr3t-token@git.corp.example/app.git", "credentials"},
		{"https://oauth2@git.corp.example/app.git", "credentials"},
		{"https://:tok@git.corp.example/app.git", "credentials"},
		{"http://git.corp.example/app.git", `scheme "http"`},
		{"ssh://git@git.corp.example/app.git", "ssh is not supported"},
		{"git+ssh://git.corp.example/app.git", "ssh is not supported"},
		{"git@git.corp.example:team/app.git", "ssh (user@host:path)"},
		{"file:///srv/git/app.git", `scheme "file"`},
		{"/srv/git/app.git", "local paths"},
		{"./app", "local paths"},
		{"app.git", "local paths"},
		{"ext::sh -c touch% /tmp/pwned", "without spaces"},
		{"ext::sh", "transports"},
		{"fd::3", "transports"},
		{"-uhttps://x/y", "must not start with '-'"},
		{"https://-oProxyCommand=x/y", "host must not start"},
		{"https:///app.git", "must name a host"},
		{"https://git.corp.example:99999/x", "bad port"},
		{"https://git.corp.example/a\nb", "printable ASCII"},
		{"https://git.corp.example/\u009b2Japp", "printable ASCII"},
		{"https://git.corp.example/\u202egnp.exe", "printable ASCII"},
		{"https://gït.corp.example/app", "printable ASCII"},
		{"", "required"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			err := (&api.Source{Kind: api.SourceGit, URL: tc.url, Commit: commit}).Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var fe api.FieldErrors
			if !errors.As(err, &fe) || len(fe) != 1 || fe[0].Field != "source.url" || !strings.Contains(fe[0].Message, tc.want) {
				t.Fatalf("got %v, want a source.url error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "tok@") {
				t.Fatalf("the error repeats the credentials: %v", err)
			}
		})
	}
}

func TestLabelValuesRefuseTerminalControls(t *testing.T) {
	spec := api.JobSpec{Build: api.Build{Script: "x"}, Labels: map[string]string{"zone": "\x1b[2Jb"}}
	err := spec.Validate()
	if err == nil || !strings.Contains(err.Error(), "labels.zone") {
		t.Fatalf("err = %v", err)
	}
	spec.Labels["zone"] = "eu-west-1"
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
}
