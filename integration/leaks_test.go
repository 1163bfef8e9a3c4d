package integration

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
)

// The secret-leak detector the end-to-end tests rely on finds a value in
// every encoding it claims to check, wherever it sits in a longer blob, and
// nothing in text where the value was redacted. (No root needed.)
func TestLeakDetectorFindsEveryEncoding(t *testing.T) {
	const v = "npm_rd/0a1b2c3d4e5f+e2e=9f8e"
	cases := map[string]string{
		"raw":       "env: NPM_READ_TOKEN=" + v + "\n",
		"url-query": "url=" + url.QueryEscape("NPM_READ_TOKEN="+v),
		"url-path":  "/collect/" + url.PathEscape(v) + "/x",
		"hex":       "dns " + hex.EncodeToString([]byte("x"+v)) + ".exfil.example",
		"HEX":       strings.ToUpper(hex.EncodeToString([]byte(v))),
	}
	for k := 0; k < 3; k++ {
		for _, tail := range []string{"", "a", "ab"} {
			prefix := strings.Repeat("p", 3+k)
			cases["base64 "+prefix+"…"+tail] = "base64=" + base64.StdEncoding.EncodeToString([]byte(prefix+v+tail))
		}
	}
	for name, text := range cases {
		if _, ok := leaks(text, v); !ok {
			t.Errorf("%s: leak not found in %q", name, text)
		}
	}
	clean := "env: NPM_READ_TOKEN=[REDACTED]\nbase64=" + base64.StdEncoding.EncodeToString([]byte("NPM_READ_TOKEN=[REDACTED]"))
	if form, ok := leaks(clean, v); ok {
		t.Errorf("false positive (%s) in %q", form, clean)
	}
}
