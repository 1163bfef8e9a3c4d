package secrets

import (
	"bytes"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// This file holds the tests' own, independent idea of "a secret leaked", and
// the helper that runs a redactor under many chunkings.

// leakForm is one way a secret can be printed, as the tests see it.
type leakForm struct {
	name string
	text string
	fold bool
}

// leakForms lists the printed forms of secret that must never survive
// redaction. Base64/base32 forms are the characters that depend only on the
// secret's own bytes when it sits at every possible alignment in a blob.
func leakForms(secret []byte) []leakForm {
	var forms []leakForm
	add := func(name, text string, fold bool) {
		if len(text) >= MinRedactLen {
			forms = append(forms, leakForm{name, text, fold})
		}
	}
	s := string(secret)
	add("raw", s, false)
	for pad := 0; pad < 3; pad++ {
		for _, e := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			full := e.EncodeToString(append(make([]byte, pad), secret...))
			firstWhole := (pad*8 + 5) / 6
			lastWhole := (pad+len(secret))*8/6 - 1
			if lastWhole >= firstWhole {
				add(fmt.Sprintf("base64/%d", pad), full[firstWhole:lastWhole+1], false)
			}
		}
	}
	for pad := 0; pad < 5; pad++ {
		full := base32.StdEncoding.EncodeToString(append(make([]byte, pad), secret...))
		firstWhole := (pad*8 + 4) / 5
		lastWhole := (pad+len(secret))*8/5 - 1
		if lastWhole >= firstWhole {
			add(fmt.Sprintf("base32/%d", pad), full[firstWhole:lastWhole+1], true)
		}
	}
	add("hex", hex.EncodeToString(secret), true)
	for _, esc := range []string{url.QueryEscape(s), url.PathEscape(s)} {
		add("percent", esc, false)
		lowered := regexp.MustCompile(`%[0-9A-F]{2}`).ReplaceAllStringFunc(esc, strings.ToLower)
		add("percent-lower", lowered, false)
	}
	js, _ := json.Marshal(s)
	add("json", string(js[1:len(js)-1]), false)
	var noHTML bytes.Buffer
	enc := json.NewEncoder(&noHTML)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	nh := strings.TrimSuffix(noHTML.String(), "\n")
	add("json-nohtml", nh[1:len(nh)-1], false)
	q, qa := strconv.Quote(s), strconv.QuoteToASCII(s)
	add("go%q", q[1:len(q)-1], false)
	add("go%+q", qa[1:len(qa)-1], false)
	return forms
}

// leakIn returns the name of a form of secret that occurs in text, or "".
func leakIn(text string, secret []byte) string {
	if len(secret) < MinRedactLen {
		return ""
	}
	lower := strings.ToLower(text)
	for _, f := range leakForms(secret) {
		if strings.Contains(text, f.text) || f.fold && strings.Contains(lower, strings.ToLower(f.text)) {
			return f.name
		}
	}
	return ""
}

// leakInOutput checks only the stretches of out between markers: a form
// that straddles a marker was not printed by the job.
func leakInOutput(out string, secret []byte) string {
	for _, piece := range strings.Split(out, Marker) {
		if l := leakIn(piece, secret); l != "" {
			return l
		}
	}
	return ""
}

// chunking names a way of splitting one input into writes.
type chunking struct {
	name string
	next func(remaining int) int
}

func chunkings(seed uint64) []chunking {
	rng := rand.New(rand.NewPCG(seed, 7))
	cs := []chunking{
		{"one write", func(n int) int { return n }},
		{"byte by byte", func(int) int { return 1 }},
	}
	for i := 0; i < 4; i++ {
		cs = append(cs, chunking{fmt.Sprintf("random %d", i), func(n int) int { return 1 + rng.IntN(min(n, 17)) }})
	}
	return cs
}

// redactWith writes in through a Redactor of m split by c, then flushes.
func redactWith(t testing.TB, m *Matcher, in []byte, c chunking) string {
	t.Helper()
	var out bytes.Buffer
	r := m.NewRedactor(&out)
	for len(in) > 0 {
		n := c.next(len(in))
		w, err := r.Write(in[:n])
		if err != nil || w != n {
			t.Fatalf("%s: Write = %d, %v; want %d, nil", c.name, w, err, n)
		}
		in = in[n:]
	}
	if err := r.Flush(); err != nil {
		t.Fatalf("%s: Flush: %v", c.name, err)
	}
	return out.String()
}

// redactAllWays runs every chunking, fails unless they agree, and returns
// the common output.
func redactAllWays(t testing.TB, m *Matcher, in []byte, seed uint64) string {
	t.Helper()
	var want string
	for i, c := range chunkings(seed) {
		got := redactWith(t, m, in, c)
		if i == 0 {
			want = got
			if s := m.RedactString(string(in)); s != want {
				t.Fatalf("RedactString = %q, streaming one write = %q", s, want)
			}
			continue
		}
		if got != want {
			t.Fatalf("chunking %q gave %q, one write gave %q", c.name, got, want)
		}
	}
	return want
}
