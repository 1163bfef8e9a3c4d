package secrets

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

// shapeWords are the words that may start a token shape; input without
// them and without secrets must come out unchanged.
var shapeWords = []string{"npm_", "bearer", "authorization", "://", "_auth", "_password"}

// FuzzRedactor asserts, for any input, secrets and chunking: every chunking
// gives the same output as one write and as RedactString; no configured
// secret in any listed encoding survives outside a marker; and input holding
// no secret and no token-shape trigger comes out unchanged.
func FuzzRedactor(f *testing.F) {
	f.Add([]byte("log s3cr3t-value-ABC end"), []byte("s3cr3t-value-ABC"), "hunter2hunter2", uint64(1))
	f.Add([]byte("x "+base64.StdEncoding.EncodeToString([]byte("\x01s3cr3t-value-ABC"))), []byte("s3cr3t-value-ABC"), "zzzzzz", uint64(2))
	f.Add([]byte(strings.ToUpper(hex.EncodeToString([]byte("hunter2hunter2")))+".exfil"), []byte("abcdefgh"), "hunter2hunter2", uint64(3))
	f.Add([]byte("Authorization: Bearer abc123 https://u:p@h/ npm_abcdefghijabcdefghijabcdefghij123456"), []byte("p@ss/w0rd"), `q"<>\`, uint64(4))
	f.Add([]byte("plain text with no secrets\n"), []byte{}, "", uint64(5))
	f.Fuzz(func(t *testing.T, in, s1 []byte, s2 string, seed uint64) {
		if len(in) > 4096 || len(s1) > 200 || len(s2) > 200 {
			t.Skip("bounded sizes keep each run fast")
		}
		// Most runs plant one form of s1 in the input, so leaks are really
		// attempted rather than left to chance.
		if forms := leakForms(s1); len(forms) > 0 && seed%4 != 0 {
			at := int(seed>>8) % (len(in) + 1)
			f := forms[int(seed>>2)%len(forms)].text
			in = append(in[:at:at], append([]byte(f), in[at:]...)...)
		}
		values := [][]byte{s1, []byte(s2)}
		m := NewMatcher(values)
		out := redactAllWays(t, m, in, seed)
		for _, v := range values {
			if l := leakInOutput(out, v); l != "" {
				t.Fatalf("form %s of secret %q survived: in %q, out %q", l, v, in, out)
			}
		}
		clean := leakIn(string(in), s1) == "" && leakIn(string(in), []byte(s2)) == ""
		lower := strings.ToLower(string(in))
		for _, w := range shapeWords {
			clean = clean && !strings.Contains(lower, w)
		}
		if clean && out != string(in) {
			t.Fatalf("input without secrets or shapes changed: in %q, out %q", in, out)
		}
		if clean {
			if got := NewMatcher(nil).RedactString(string(in)); got != string(in) {
				t.Fatalf("matcher without secrets changed %q to %q", in, got)
			}
		}
	})
}
