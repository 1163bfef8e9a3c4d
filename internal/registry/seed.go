package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha1"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// exactVersion matches a full semver version, not a range or a tag: the
// registry serves only the `latest` dist-tag, so seeds name exact versions.
var exactVersion = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// ParseSpec splits an exact "name@version" spec ("@scope/name@1.2.3" too).
func ParseSpec(spec string) (name, version string, err error) {
	i := strings.LastIndex(spec, "@")
	if i <= 0 {
		return "", "", fmt.Errorf("parsing package spec %q: want name@version", spec)
	}
	name, version = spec[:i], spec[i+1:]
	if !exactVersion.MatchString(version) {
		return "", "", fmt.Errorf("parsing package spec %q: %q is not an exact version", spec, version)
	}
	return name, version, nil
}

// PackFileName is the file name npm pack gives NAME@VERSION:
// "@scope/name" becomes "scope-name-VERSION.tgz".
func PackFileName(name, version string) string {
	return strings.Replace(strings.TrimPrefix(name, "@"), "/", "-", 1) + "-" + version + ".tgz"
}

// packBatch is how many specs one `npm pack` call fetches, and packWorkers
// how many such calls run at once: npm pack fetches its specs one after the
// other, so a large first seed (the webapp's 373 packages) goes several
// times faster in parallel batches, and each finished batch is a progress
// line.
const (
	packBatch   = 25
	packWorkers = 4
)

// Pack makes sure every exact spec has its tarball in cacheDir/tarballs,
// fetching the missing ones from the public npm registry with `npm pack`
// (in batches, several at once, a progress line to progress after each
// batch when progress is not nil), and returns the tarball paths in spec
// order. npm pack of a registry spec saves the published bytes unchanged, so
// the integrity values match the public registry's. Tarballs already in the
// cache are never fetched again.
func Pack(ctx context.Context, cacheDir string, specs []string, progress io.Writer) ([]string, error) {
	if cacheDir == "" {
		cacheDir = CacheDir()
	}
	dir := filepath.Join(cacheDir, "tarballs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating tarball cache: %w", err)
	}
	paths := make([]string, len(specs))
	var missing []string
	for i, s := range specs {
		name, version, err := ParseSpec(s)
		if err != nil {
			return nil, err
		}
		paths[i] = filepath.Join(dir, PackFileName(name, version))
		if _, err := os.Stat(paths[i]); err != nil {
			missing = append(missing, s)
		}
	}
	if len(missing) == 0 {
		return paths, nil
	}
	var batches [][]string
	for len(missing) > 0 {
		n := min(packBatch, len(missing))
		batches = append(batches, missing[:n])
		missing = missing[n:]
	}
	total := 0
	for _, b := range batches {
		total += len(b)
	}
	say(progress, "packing %d package(s) from the npm registry into %s (once: later runs use the cache)", total, dir)
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		done int
		errs []error
		wg   sync.WaitGroup
	)
	work := make(chan []string)
	for range min(packWorkers, len(batches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				err := packBatchInto(ctx, cacheDir, dir, b)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
					cancel()
				} else {
					done += len(b)
					if len(batches) > 1 {
						say(progress, "  packed %d/%d (%.0fs)", done, total, time.Since(start).Seconds())
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, b := range batches {
		if ctx.Err() != nil {
			break
		}
		work <- b
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return paths, nil
}

// packBatchInto packs specs with one `npm pack` call into a private folder,
// then renames each tarball into dir: a concurrent run never sees a
// half-written tarball.
func packBatchInto(ctx context.Context, cacheDir, dir string, specs []string) error {
	tmp, err := os.MkdirTemp(dir, ".pack-")
	if err != nil {
		return fmt.Errorf("creating pack folder: %w", err)
	}
	defer os.RemoveAll(tmp)
	npmrc, err := writeNpmrc(tmp, "npmrc", publicRegistry)
	if err != nil {
		return err
	}
	args := append([]string{"pack", "--userconfig", npmrc,
		"--cache", filepath.Join(cacheDir, "npm-cache"),
		"--pack-destination", tmp, "--ignore-scripts", "--loglevel=error"}, specs...)
	cmd := exec.CommandContext(ctx, "npm", args...)
	cmd.Dir = tmp
	cmd.Env = npmEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("packing %d packages from the npm registry: %w\n%s", len(specs), err, tail(out, 4000))
	}
	for _, s := range specs {
		name, version, _ := ParseSpec(s)
		f := PackFileName(name, version)
		if err := os.Rename(filepath.Join(tmp, f), filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("storing packed %s: %w", s, err)
		}
	}
	return nil
}

// say writes one progress line when w is not nil.
func say(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
}

// Seed publishes exact public packages (packed once into the cache by Pack)
// and local tarballs to the registry. Tarballs are published byte for byte
// — the request npm publish makes, sent directly — so the integrity values
// in lockfiles generated against any registry holding the same tarballs
// match. Versions of one package are published in order, different packages
// four at a time. A version already present is not an error.
func (r *Registry) Seed(ctx context.Context, pkgs []string, tarballs []string) error {
	packed, err := Pack(ctx, r.install.CacheDir, pkgs, r.progress)
	if err != nil {
		return err
	}
	// Group by package name: Verdaccio updates one packument per publish, so
	// versions of the same package go one after the other.
	byName := map[string][]*tarball{}
	var order []string
	for _, p := range append(packed, tarballs...) {
		tb, err := readTarball(p)
		if err != nil {
			return err
		}
		if _, ok := byName[tb.name]; !ok {
			order = append(order, tb.name)
		}
		byName[tb.name] = append(byName[tb.name], tb)
	}

	// Many tarballs (the webapp's closure) take seconds: say so.
	total, start := len(packed)+len(tarballs), time.Now()
	chatty := total >= publishProgressMin
	if chatty {
		say(r.progress, "publishing %d tarball(s) to the registry", total)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, name := range order {
		wg.Add(1)
		go func(tbs []*tarball) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			for _, tb := range tbs {
				if err := r.publish(ctx, tb); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					cancel()
					return
				}
			}
		}(byName[name])
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if chatty {
		say(r.progress, "  published %d tarball(s) in %.1fs", total, time.Since(start).Seconds())
	}
	return nil
}

// publishProgressMin is the number of tarballs from which Seed reports its
// publishing (the small examples' seed stays quiet).
const publishProgressMin = 50

// tarball is a package tarball read into memory with its manifest.
type tarball struct {
	path     string
	name     string
	version  string
	manifest map[string]any
	data     []byte
}

// readTarball reads a package tarball and its package.json.
func readTarball(p string) (*tarball, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading tarball: %w", err)
	}
	m, err := tarballManifest(data)
	if err != nil {
		return nil, fmt.Errorf("reading package.json from %s: %w", p, err)
	}
	name, _ := m["name"].(string)
	version, _ := m["version"].(string)
	if name == "" || version == "" {
		return nil, fmt.Errorf("reading package.json from %s: name or version missing", p)
	}
	return &tarball{path: p, name: name, version: version, manifest: m, data: data}, nil
}

// tarballManifest returns the package.json at the tarball's top folder
// (usually "package/", but old tarballs use other names).
func tarballManifest(data []byte) (map[string]any, error) {
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, errors.New("no package.json")
		}
		if err != nil {
			return nil, err
		}
		parts := strings.Split(strings.TrimPrefix(path.Clean(h.Name), "./"), "/")
		if len(parts) != 2 || parts[1] != "package.json" || h.Typeflag != tar.TypeReg {
			continue
		}
		var m map[string]any
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return nil, err
		}
		return m, nil
	}
}

// Integrity is the SRI string npm records for a tarball (sha512).
func Integrity(data []byte) string {
	sum := sha512.Sum512(data)
	return "sha512-" + base64.StdEncoding.EncodeToString(sum[:])
}

// PublishFile publishes one local tarball as is.
func (r *Registry) PublishFile(ctx context.Context, p string) error {
	tb, err := readTarball(p)
	if err != nil {
		return err
	}
	return r.publish(ctx, tb)
}

// publish sends the publish document npm publish would send for tb, with
// the tarball bytes unchanged as its attachment.
func (r *Registry) publish(ctx context.Context, tb *tarball) error {
	spec := tb.name + "@" + tb.version
	sha1sum := sha1.Sum(tb.data)
	file := PackFileName(path.Base(tb.name), tb.version) // npm: no scope in the file name
	v := make(map[string]any, len(tb.manifest)+2)
	for k, val := range tb.manifest {
		v[k] = val
	}
	v["_id"] = spec
	v["dist"] = map[string]any{
		"integrity": Integrity(tb.data),
		"shasum":    hex.EncodeToString(sha1sum[:]),
		"tarball":   r.URL + tb.name + "/-/" + file,
	}
	doc := map[string]any{
		"_id":         tb.name,
		"name":        tb.name,
		"description": tb.manifest["description"],
		"dist-tags":   map[string]string{"latest": tb.version},
		"versions":    map[string]any{tb.version: v},
		"access":      nil,
		"_attachments": map[string]any{file: map[string]any{
			"content_type": "application/octet-stream",
			"data":         base64.StdEncoding.EncodeToString(tb.data),
			"length":       len(tb.data),
		}},
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encoding publish of %s: %w", spec, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut,
		r.URL+strings.Replace(tb.name, "/", "%2f", 1), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("publishing %s: %w", spec, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.PublisherToken)
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("publishing %s: %w", spec, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode == http.StatusConflict:
		return nil // already there: seeding is idempotent
	case resp.StatusCode >= 300:
		return fmt.Errorf("publishing %s: status %d: %s", spec, resp.StatusCode, trimJSONError(b))
	}
	return nil
}
