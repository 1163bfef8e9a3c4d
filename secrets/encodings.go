package secrets

import (
	"bytes"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strconv"
)

// encoded is one form of a secret the redactor looks for. fold marks forms
// matched case-insensitively (hex, base32: DNS names are case-insensitive).
type encoded struct {
	b    []byte
	fold bool
}

// encodings lists the forms in which a value is commonly printed: raw,
// base64 (standard and URL alphabets, each at the three alignments a value
// can have inside a longer encoded blob, padded or not), base32 (five
// alignments), hex, percent-encoding (query and path, upper and lower case
// escapes), JSON string escaping (with and without HTML escaping) and Go %q /
// %+q escaping. Forms shorter than MinRedactLen are dropped.
func encodings(v []byte) []encoded {
	var out []encoded
	add := func(b []byte, fold bool) {
		if len(b) >= MinRedactLen {
			out = append(out, encoded{b, fold})
		}
	}
	add(v, false)
	for k := 0; k < 3; k++ {
		add(innerBase64(base64.StdEncoding, v, k), false)
		add(innerBase64(base64.URLEncoding, v, k), false)
	}
	for k := 0; k < 5; k++ {
		add(innerBase32(v, k), true)
	}
	add([]byte(hex.EncodeToString(v)), true)
	s := string(v)
	for _, e := range []string{url.QueryEscape(s), url.PathEscape(s)} {
		add([]byte(e), false)
		add(lowerEscapes([]byte(e)), false)
	}
	add(jsonEscape(v, true), false)
	add(jsonEscape(v, false), false)
	add(unquote(strconv.Quote(s)), false)
	add(unquote(strconv.QuoteToASCII(s)), false)
	return out
}

// innerBase64 encodes v preceded by k filler bytes and keeps only the
// characters whose 6 bits come entirely from v: they are the same whatever
// surrounds v in the encoded blob.
func innerBase64(enc *base64.Encoding, v []byte, k int) []byte {
	full := enc.EncodeToString(append(make([]byte, k), v...))
	lo, hi := (8*k+5)/6, 8*(k+len(v))/6
	if hi <= lo {
		return nil
	}
	return []byte(full[lo:hi])
}

// innerBase32 is innerBase64 for base32's 5-bit characters.
func innerBase32(v []byte, k int) []byte {
	full := base32.StdEncoding.EncodeToString(append(make([]byte, k), v...))
	lo, hi := (8*k+4)/5, 8*(k+len(v))/5
	if hi <= lo {
		return nil
	}
	return []byte(full[lo:hi])
}

// lowerEscapes rewrites %2F-style escapes as %2f, as some encoders print them.
func lowerEscapes(b []byte) []byte {
	out := bytes.Clone(b)
	for i := 0; i+2 < len(out); i++ {
		if out[i] == '%' {
			out[i+1], out[i+2] = lowerASCII(out[i+1]), lowerASCII(out[i+2])
			i += 2
		}
	}
	return out
}

func jsonEscape(v []byte, html bool) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(html)
	if err := enc.Encode(string(v)); err != nil {
		return nil
	}
	return unquote(string(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))))
}

// unquote strips the surrounding double quotes of an escaped string.
func unquote(q string) []byte {
	if len(q) < 2 {
		return nil
	}
	return []byte(q[1 : len(q)-1])
}

func lowerASCII(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func foldBytes(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = lowerASCII(c)
	}
	return out
}
