package gateway

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Limits on what an upstream may send.
const (
	maxTarballBytes   = 2 << 30   // one tarball
	maxPackumentBytes = 512 << 20 // one full packument (popular packages have thousands of versions)
	// fetchTimeout bounds one tarball fetch, which runs on past the
	// request that started it (others may be waiting for it).
	fetchTimeout = 15 * time.Minute
)

// packument is what the gateway reads of a package's registry document.
type packument struct {
	Time     map[string]string `json:"time"`
	Versions map[string]struct {
		Dist struct {
			Integrity string `json:"integrity"`
		} `json:"dist"`
	} `json:"versions"`
}

// packumentPath is a name as the registry's packument path: scoped names
// keep the scope's "@" and escape the slash.
func packumentPath(name string) string {
	return strings.Replace(name, "/", "%2f", 1)
}

// packument fetches and decodes the full packument of name from up.
func (g *Gateway) packument(ctx context.Context, up *upstream, name string) (*packument, error) {
	body, err := g.packumentBody(ctx, up, name, "application/json")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	var p packument
	if err := json.NewDecoder(io.LimitReader(body, maxPackumentBytes)).Decode(&p); err != nil {
		return nil, &UpstreamError{Upstream: up.String(), What: "the packument of " + name,
			Err: fmt.Errorf("decoding: %w", err)}
	}
	return &p, nil
}

// packumentBody fetches name's packument from up (accept: its media type).
func (g *Gateway) packumentBody(ctx context.Context, up *upstream, name, accept string) (io.ReadCloser, error) {
	what := "the packument of " + name
	resp, err := g.do(ctx, up, http.MethodGet, up.base.String()+packumentPath(name), accept)
	if err != nil {
		return nil, &UpstreamError{Upstream: up.String(), What: what, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &UpstreamError{Upstream: up.String(), What: what, Status: resp.StatusCode}
	}
	return resp.Body, nil
}

// sha512Of is the sha512 t's tarball must hash to: the lockfile's, or for
// a sha1-only entry the one its registry publishes (fetched once).
func (g *Gateway) sha512Of(ctx context.Context, t *target) ([]byte, error) {
	if !t.weak() {
		return t.want.sum, nil
	}
	g.publishedMu.Lock()
	sum := g.published[t.spec()]
	g.publishedMu.Unlock()
	if sum != nil {
		return sum, nil
	}
	p, err := g.packument(ctx, g.forName(t.entry.Name), t.entry.Name)
	if err != nil {
		return nil, err
	}
	if r := g.checkPublished(t, p, 0); r != nil {
		return nil, &RefusedError{Refusals: []Refusal{*r}}
	}
	g.publishedMu.Lock()
	defer g.publishedMu.Unlock()
	return g.published[t.spec()], nil
}

// ensure makes t's tarball present and verified in the cache, fetching it
// once for all concurrent callers. hit says it was there already.
func (g *Gateway) ensure(ctx context.Context, t *target) (sum []byte, hit bool, err error) {
	if sum, err = g.sha512Of(ctx, t); err != nil {
		return nil, false, err
	}
	key := hex.EncodeToString(sum)
	if g.cache.stored(key) {
		return sum, true, nil
	}
	err = g.cache.do(ctx, key, func() error {
		if g.cache.stored(key) {
			return nil // fetched by a flight that just ended
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return g.download(fctx, t, key, sum)
	})
	return sum, false, err
}

// download streams t's tarball from its upstream into a temp file of the
// cache while hashing it, and stores it under key only when it matches
// sum (and, for a sha1-only entry, the lockfile's hash as well).
func (g *Gateway) download(ctx context.Context, t *target, key string, sum []byte) (retErr error) {
	start := time.Now()
	resp, err := g.do(ctx, t.up, http.MethodGet, t.url, "application/octet-stream")
	if err != nil {
		return &UpstreamError{Upstream: t.up.String(), What: t.spec(), Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &UpstreamError{Upstream: t.up.String(), What: t.spec(), Status: resp.StatusCode}
	}
	f, err := g.cache.tempFile()
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		if retErr != nil {
			os.Remove(f.Name())
		}
	}()
	h512 := newHash("sha512")
	w := io.MultiWriter(f, h512)
	hWant := h512
	if t.weak() {
		hWant = newHash(t.want.alg)
		w = io.MultiWriter(f, h512, hWant)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, maxTarballBytes+1))
	if err == nil && n > maxTarballBytes {
		err = fmt.Errorf("larger than %d bytes", maxTarballBytes)
	}
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return &UpstreamError{Upstream: t.up.String(), What: t.spec(), Err: fmt.Errorf("reading the tarball: %w", err)}
	}
	if got := h512.Sum(nil); string(got) != string(sum) {
		want := digest{alg: "sha512", sum: sum}
		if !t.weak() {
			want = t.want
		}
		return &IntegrityError{Entry: t.entry, Want: want.String(), Got: digest{alg: "sha512", sum: got}.String()}
	}
	if got := hWant.Sum(nil); string(got) != string(t.want.sum) {
		return &IntegrityError{Entry: t.entry, Want: t.want.String(), Got: digest{alg: t.want.alg, sum: got}.String()}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing cached tarball: %w", err)
	}
	if err := g.cache.commit(f.Name(), key, n); err != nil {
		return err
	}
	g.log.Debug("fetched tarball", "package", t.spec(), "upstream", t.up.String(), "bytes", n,
		"duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// isIntegrity reports whether err is an integrity mismatch.
func isIntegrity(err error) bool {
	var ie *IntegrityError
	return errors.As(err, &ie)
}
