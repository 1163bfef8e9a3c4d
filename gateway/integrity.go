package gateway

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"strings"
)

// digest is one hash of a Subresource Integrity string.
type digest struct {
	alg string // "sha512", "sha384", "sha256", "sha1"
	sum []byte
}

func (d digest) String() string {
	return d.alg + "-" + base64.StdEncoding.EncodeToString(d.sum)
}

// algorithms known, strongest first, with their digest sizes.
var algorithms = []struct {
	name string
	size int
	new  func() hash.Hash
}{
	{"sha512", sha512.Size, sha512.New},
	{"sha384", sha512.Size384, sha512.New384},
	{"sha256", sha256.Size, sha256.New},
	{"sha1", sha1.Size, sha1.New},
}

func newHash(alg string) hash.Hash {
	for _, a := range algorithms {
		if a.name == alg {
			return a.new()
		}
	}
	panic("gateway: unknown hash " + alg)
}

// parseIntegrity returns the strongest hash of an SRI string ("sha512-…",
// possibly several space-separated, each possibly with "?options").
// Unknown algorithms are ignored; malformed known ones are an error, as is
// a string with no known hash.
func parseIntegrity(sri string) (digest, error) {
	best, rank := digest{}, len(algorithms)
	for _, f := range strings.Fields(sri) {
		alg, b64, ok := strings.Cut(f, "-")
		if !ok {
			continue
		}
		b64, _, _ = strings.Cut(b64, "?")
		for i, a := range algorithms {
			if a.name != alg || i >= rank {
				continue
			}
			sum, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				sum, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(b64, "="))
			}
			if err != nil || len(sum) != a.size {
				return digest{}, fmt.Errorf("malformed %s integrity %q", alg, f)
			}
			best, rank = digest{alg: alg, sum: sum}, i
		}
	}
	if best.alg == "" {
		return digest{}, fmt.Errorf("no sha512, sha384, sha256 or sha1 hash in integrity %q", sri)
	}
	return best, nil
}
