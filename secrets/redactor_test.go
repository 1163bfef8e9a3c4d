package secrets

import (
	"bytes"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	tokenA   = []byte("s3cr3t-value-ABC")
	tokenB   = []byte("hunter2hunter2")
	tokenEsc = []byte(`p@ss/w0rd+&=?x "q" <\>`)
	short    = []byte("abc12")
	// longTok is longer than indexPrefix, so its forms are confirmed past
	// the automaton.
	longTok = []byte(strings.Repeat("LongSecretPart-", 6) + "end")
)

func testMatcher() *Matcher {
	return NewMatcher([][]byte{tokenA, tokenB, tokenEsc, short, longTok})
}

func TestRedactorHidesConfiguredSecrets(t *testing.T) {
	m := testMatcher()
	cases := []struct {
		name, in, want string
	}{
		{"secret in a line", "token is s3cr3t-value-ABC, ok\n", "token is [REDACTED], ok\n"},
		{"secret at start and end", "s3cr3t-value-ABC and s3cr3t-value-ABC", "[REDACTED] and [REDACTED]"},
		{"adjacent secrets merge", "s3cr3t-value-ABChunter2hunter2!", "[REDACTED]!"},
		{"overlapping occurrences merge", "xhunter2hunter2hunter2y", "x[REDACTED]y"},
		{"long secret", "k=" + string(longTok) + ";", "k=[REDACTED];"},
		{"long secret cut short is kept", "k=" + string(longTok[:80]), "k=" + string(longTok[:80])},
		{"other case of a raw secret is not it", "S3CR3T-VALUE-abc", "S3CR3T-VALUE-abc"},
		{"prefix of a secret at end of stream", "ends with s3cr3t-val", "ends with s3cr3t-val"},
		{"short values are never matched", "abc12 abc12", "abc12 abc12"},
		{"hex upper", "h=" + strings.ToUpper(hex.EncodeToString(tokenA)) + ".", "h=[REDACTED]."},
		{"hex mixed case", "h=" + mixCase(hex.EncodeToString(tokenB)), "h=[REDACTED]"},
		{"json escaped", `{"v":"p@ss/w0rd+\u0026=?x \"q\" \u003c\\\u003e"}`, `{"v":"[REDACTED]"}`},
		{"json escaped without html escaping", `{"v":"p@ss/w0rd+&=?x \"q\" <\\>"}`, `{"v":"[REDACTED]"}`},
		{"go %q", fmt.Sprintf("v=%q", tokenEsc), `v="[REDACTED]"`},
		{"no secret", "plain npm output\n", "plain npm output\n"},
		{"empty", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := redactAllWays(t, m, []byte(tc.in), 1); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func mixCase(s string) string {
	b := []byte(s)
	for i := range b {
		if i%2 == 0 {
			b[i] = bytes.ToUpper(b[i : i+1])[0]
		}
	}
	return string(b)
}

func TestRedactorHidesEncodedSecretsAtEveryAlignment(t *testing.T) {
	m := testMatcher()
	type enc struct {
		name string
		f    func([]byte) string
	}
	encs := []enc{
		{"base64 std", base64.StdEncoding.EncodeToString},
		{"base64 url", base64.URLEncoding.EncodeToString},
		{"base64 raw std", base64.RawStdEncoding.EncodeToString},
		{"base64 raw url", base64.RawURLEncoding.EncodeToString},
		{"base32 lower", func(b []byte) string { return strings.ToLower(base32.StdEncoding.EncodeToString(b)) }},
		{"base32 upper", base32.StdEncoding.EncodeToString},
	}
	for _, secret := range [][]byte{tokenA, tokenB, tokenEsc, longTok} {
		for _, e := range encs {
			for pre := 0; pre < 5; pre++ {
				for post := 0; post < 3; post++ {
					name := fmt.Sprintf("%s/%.6s/pre%d/post%d", e.name, secret, pre, post)
					t.Run(name, func(t *testing.T) {
						blob := append(append(bytes.Repeat([]byte{0xA5}, pre), secret...), bytes.Repeat([]byte{0x5A}, post)...)
						in := "before " + e.f(blob) + " after"
						if leakIn(in, secret) == "" {
							t.Fatalf("oracle sees no secret in %q", in)
						}
						got := redactAllWays(t, m, []byte(in), uint64(pre*3+post))
						if l := leakInOutput(got, secret); l != "" {
							t.Errorf("form %s leaked in %q", l, got)
						}
						if !strings.HasPrefix(got, "before ") || !strings.HasSuffix(got, " after") || !strings.Contains(got, Marker) {
							t.Errorf("surroundings not kept or nothing redacted: %q", got)
						}
					})
				}
			}
		}
	}
}

func TestRedactorHidesPercentEncodedSecret(t *testing.T) {
	m := testMatcher()
	for _, in := range []string{
		"https://r.example/?t=p%40ss%2Fw0rd%2B%26%3D%3Fx+%22q%22+%3C%5C%3E&x=1",
		"https://r.example/p%40ss%2fw0rd%2b%26%3d%3fx+%22q%22+%3c%5c%3e&x=1",
		"/a/p@ss%2Fw0rd+&=%3Fx%20%22q%22%20%3C%5C%3E/b",
	} {
		if leakIn(in, tokenEsc) == "" {
			t.Fatalf("oracle sees no secret in %q", in)
		}
		got := redactAllWays(t, m, []byte(in), 3)
		if l := leakInOutput(got, tokenEsc); l != "" || !strings.Contains(got, Marker) {
			t.Errorf("redacting %q: got %q (leak %q)", in, got, l)
		}
	}
}

func TestRedactorHidesTokenShapesWithoutConfiguration(t *testing.T) {
	m := NewMatcher(nil)
	npmTok := "npm_" + strings.Repeat("aB3", 12)
	cases := []struct {
		name, in, want string
	}{
		{"npm token", "token " + npmTok + "\n", "token [REDACTED]\n"},
		{"npm token at end of stream", npmTok, Marker},
		{"npm token one char short", npmTok[:39] + "!", npmTok[:39] + "!"},
		{"npm_config variable", "npm_config_cache=/tmp/.npm", "npm_config_cache=/tmp/.npm"},
		{"authorization bearer", "Authorization: Bearer abc.def-123_x\r\n", "Authorization: Bearer [REDACTED]\r\n"},
		{"authorization basic", "authorization: Basic dXNlcjpwYXNzd29yZA==\n", "authorization: Basic [REDACTED]\n"},
		{"authorization in json", `{"Authorization":"Bearer tok123456"}`, `{"Authorization":"Bearer [REDACTED]"}`},
		{"authorization raw token", "Authorization: ghp_abc123", "Authorization: [REDACTED]"},
		{"bare bearer token", "curl -H 'bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0' x", "curl -H 'bearer [REDACTED]' x"},
		{"bearer in prose", "uses Bearer authentication", "uses Bearer authentication"},
		{"authorization in prose", "authorization failed", "authorization failed"},
		{"url userinfo", "fetch https://bob:hunter2@registry.example/pkg", "fetch https://[REDACTED]@registry.example/pkg"},
		{"git url userinfo", "git+https://x-access-token:ghs_1@github.com/o/r.git", "git+https://[REDACTED]@github.com/o/r.git"},
		{"url user without password", "git+ssh://git@github.com/o/r.git", "git+ssh://git@github.com/o/r.git"},
		{"url without userinfo", "see https://example.com/a:b@c", "see https://example.com/a:b@c"},
		{"npmrc auth token", "//registry.example/:_authToken=abc123def\n", "//registry.example/:_authToken=[REDACTED]\n"},
		{"npmrc auth token spaced", "//r/:_authToken = \"abc123def\"\n", "//r/:_authToken = \"[REDACTED]\"\n"},
		{"npmrc _auth", "_auth=dXNlcjpwYXNz\n", "_auth=[REDACTED]\n"},
		{"npmrc _password", "//r/:_password=cGFzcw==", "//r/:_password=[REDACTED]"},
		{"json authToken", `{"_authToken": "abc"}`, `{"_authToken": "[REDACTED]"}`},
		{"auth word without value", "_auth is unset", "_auth is unset"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := redactAllWays(t, m, []byte(tc.in), 2); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRedactDomainHidesSecretSplitOverLabels(t *testing.T) {
	m := testMatcher()
	h := hex.EncodeToString(tokenA)
	b32 := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(tokenB), "="))
	cases := []struct {
		name, domain string
	}{
		{"hex in one label", strings.ToUpper(h) + ".exfil.example"},
		{"hex over two labels", h[:10] + "." + h[10:] + ".exfil.example"},
		{"base32 over three labels", b32[:5] + "." + b32[5:12] + "." + b32[12:] + ".exfil.example"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := m.RedactDomain(tc.domain)
			if !strings.HasSuffix(got, ".exfil.example") || !strings.Contains(got, Marker) {
				t.Fatalf("RedactDomain(%q) = %q, want a redacted name ending in .exfil.example", tc.domain, got)
			}
			if l := leakInOutput(strings.ReplaceAll(got, ".", ""), tokenA); l != "" {
				t.Errorf("form %s of tokenA left in %q", l, got)
			}
			if l := leakInOutput(strings.ReplaceAll(got, ".", ""), tokenB); l != "" {
				t.Errorf("form %s of tokenB left in %q", l, got)
			}
		})
	}
	if got := m.RedactDomain("registry.example"); got != "registry.example" {
		t.Errorf("RedactDomain(registry.example) = %q, want it unchanged", got)
	}
}

func TestRedactorHoldsBackOnlyPossibleMatches(t *testing.T) {
	var out bytes.Buffer
	r := NewRedactor(&out, [][]byte{tokenA})
	if _, err := r.Write([]byte("hello s3cr3t-")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello " {
		t.Fatalf("after a partial secret, forwarded %q, want %q", out.String(), "hello ")
	}
	if _, err := r.Write([]byte("value-ABC done")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello [REDACTED] done" {
		t.Fatalf("forwarded %q before Flush", out.String())
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello [REDACTED] done" {
		t.Fatalf("got %q", out.String())
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

func TestRedactorReportsWriterErrorAndStaysFailed(t *testing.T) {
	boom := errors.New("boom")
	r := NewRedactor(failingWriter{boom}, nil)
	if _, err := r.Write([]byte("abc\n")); !errors.Is(err, boom) {
		t.Fatalf("Write error = %v, want wrapping boom", err)
	}
	if _, err := r.Write([]byte("more")); !errors.Is(err, boom) {
		t.Fatalf("second Write error = %v, want the sticky error", err)
	}
	if err := r.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush error = %v, want the sticky error", err)
	}
}

func TestRedactorIsSafeForConcurrentWriters(t *testing.T) {
	var out bytes.Buffer
	r := NewRedactor(&out, [][]byte{tokenA})
	line := []byte("x " + string(tokenA) + " y\n")
	done := make(chan struct{})
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 200 {
				if _, err := r.Write(line); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	<-done
	<-done
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "x [REDACTED] y\n") != 400 || bytes.Contains(out.Bytes(), tokenA) {
		t.Fatalf("concurrent writes were not redacted line by line: %d lines", strings.Count(out.String(), "\n"))
	}
}

// benchSecrets returns n npm-like tokens.
func benchSecrets(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	out := make([][]byte, n)
	for i := range out {
		b := make([]byte, 40)
		for j := range b {
			b[j] = alnum[rng.IntN(len(alnum))]
		}
		out[i] = b
	}
	return out
}

// benchLog is npm-like output with a secret (in some encoding) now and then.
func benchLog(secrets [][]byte, size int) []byte {
	rng := rand.New(rand.NewPCG(3, 4))
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		switch i % 400 {
		case 0:
			fmt.Fprintf(&b, "env dump: TOKEN=%s\n", secrets[rng.IntN(len(secrets))])
		case 200:
			fmt.Fprintf(&b, "payload %s\n", base64.StdEncoding.EncodeToString(secrets[rng.IntN(len(secrets))]))
		default:
			fmt.Fprintf(&b, "npm http fetch GET 200 https://registry.internal:4873/pkg-%d/-/pkg-%d-1.%d.%d.tgz %dms (cache miss)\n",
				rng.IntN(5000), rng.IntN(5000), rng.IntN(20), rng.IntN(20), rng.IntN(900))
		}
	}
	return b.Bytes()
}

func BenchmarkRedactor100Secrets(b *testing.B) {
	secrets := benchSecrets(100)
	m := NewMatcher(secrets)
	data := benchLog(secrets, 4<<20)
	b.SetBytes(int64(len(data)))
	cpu0 := cpuTime()
	n := 0
	for b.Loop() {
		n++
		r := m.NewRedactor(discard{})
		for off := 0; off < len(data); off += 32 << 10 {
			if _, err := r.Write(data[off:min(off+32<<10, len(data))]); err != nil {
				b.Fatal(err)
			}
		}
		if err := r.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	// The machine is shared: also report throughput per CPU second used.
	if d := cpuTime() - cpu0; d > 0 {
		b.ReportMetric(float64(n*len(data))/1e6/d.Seconds(), "MB/cpu-s")
	}
	b.ReportMetric(float64(len(m.trans)*4)/(1<<20), "table-MiB")
}

// cpuTime is the user+system time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkNewMatcher100Secrets(b *testing.B) {
	secrets := benchSecrets(100)
	for b.Loop() {
		NewMatcher(secrets)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
