// Package tarball owns writing a directory tree as a tar archive: the CLI
// packs a project for upload with it, and the node image build streams its
// OCI image layout into containerd's importer with it. Reading archives
// safely (limits, links leaving the root) is the agent's, in agent/extract.go.
package tarball

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Options say how a tree is archived.
type Options struct {
	// Gzip compresses the archive (tar.gz).
	Gzip bool
	// SkipDirs are directory names left out, with all they hold, at any
	// depth (node_modules, .git).
	SkipDirs []string
	// Include, when set, is asked for every entry (its slash-separated
	// path relative to dir): false leaves it out, and a directory with all
	// it holds.
	Include func(rel string) bool
}

// WriteDir writes the tree below dir to w as a tar archive. Entries are named
// relative to dir (directories with a trailing slash) and keep their modes and
// mtimes; owners are cleared (uid and gid 0, no names), so the archive does
// not depend on who ran the build. Directories, regular files and symlinks
// (their target as it is) are archived; sockets, fifos and devices are left
// out. Errors name dir.
func WriteDir(w io.Writer, dir string, o Options) error {
	var zw *gzip.Writer
	if o.Gzip {
		zw = gzip.NewWriter(w)
		w = zw
	}
	tw := tar.NewWriter(w)
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return addEntry(tw, dir, p, d, o)
	}); err != nil {
		return fmt.Errorf("packing %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("packing %s: %w", dir, err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("packing %s: %w", dir, err)
		}
	}
	return nil
}

// addEntry writes the walked entry p (below dir) to tw.
func addEntry(tw *tar.Writer, dir, p string, d fs.DirEntry, o Options) error {
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." {
		return err
	}
	if o.Include != nil && !o.Include(filepath.ToSlash(rel)) {
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	}
	if d.IsDir() {
		for _, n := range o.SkipDirs {
			if d.Name() == n {
				return filepath.SkipDir
			}
		}
	}
	fi, err := d.Info()
	if err != nil {
		return err
	}
	link := ""
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	case fi.Mode().IsRegular(), fi.IsDir():
	default:
		return nil // sockets, fifos, devices: not part of a tree we archive
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	h.Name = filepath.ToSlash(rel)
	if fi.IsDir() {
		h.Name += "/"
	}
	h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}
