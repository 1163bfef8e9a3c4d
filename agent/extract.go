package agent

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrUnsafeArchive is returned for an archive (or checkout) that tries to
// leave the workspace or create something other than files, directories and
// links that stay inside it.
var ErrUnsafeArchive = errors.New("unsafe archive")

// ExtractLimits bound what an archive may unpack to.
type ExtractLimits struct {
	// MaxBytes caps the total size of regular files (default 2 GiB).
	MaxBytes int64
	// MaxEntries caps the number of entries (default 200000).
	MaxEntries int
}

func (l *ExtractLimits) setDefaults() {
	if l.MaxBytes <= 0 {
		l.MaxBytes = 2 << 30
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = 200000
	}
}

// ExtractTarGz unpacks a gzip-compressed tar into dest (an existing, empty
// directory). It rejects absolute paths, '..', device, fifo and other special
// entries, symlinks and hard links whose target leaves dest, and totals over
// the limits. Every write goes through an os.Root on dest, so even a link
// chain that passes the name checks cannot make a write land outside. Modes
// are reduced to permission bits (no setuid, setgid or sticky).
func ExtractTarGz(r io.Reader, dest string, lim ExtractLimits) error {
	lim.setDefaults()
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("reading gzip: %w", err)
	}
	defer zr.Close()
	root, err := os.OpenRoot(dest)
	if err != nil {
		return fmt.Errorf("opening workspace %s: %w", dest, err)
	}
	defer root.Close()
	tr := tar.NewReader(zr)
	var total int64
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if n >= lim.MaxEntries {
			return fmt.Errorf("extracting: more than %d entries: %w", lim.MaxEntries, ErrUnsafeArchive)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanEntryName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("extracting directory %s: %w", name, err)
			}
			if err := root.Chmod(name, mode|0o700); err != nil {
				return fmt.Errorf("setting mode of %s: %w", name, err)
			}
		case tar.TypeReg: // the reader reports the old TypeRegA as TypeReg
			total += h.Size
			if h.Size < 0 || total > lim.MaxBytes {
				return fmt.Errorf("extracting %s: archive unpacks to more than %d bytes: %w", name, lim.MaxBytes, ErrUnsafeArchive)
			}
			if err := mkParent(root, name); err != nil {
				return err
			}
			if err := writeEntry(root, name, mode|0o600, tr, h.Size); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := checkLinkTarget(name, h.Linkname); err != nil {
				return err
			}
			if err := mkParent(root, name); err != nil {
				return err
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("extracting symlink %s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := cleanEntryName(h.Linkname)
			if err != nil {
				return fmt.Errorf("extracting hard link %s: %w", name, err)
			}
			if err := mkParent(root, name); err != nil {
				return err
			}
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("extracting hard link %s -> %s: %w", name, target, err)
			}
		default:
			return fmt.Errorf("extracting %s: entry type %q (device, fifo or other special file) not allowed: %w", name, h.Typeflag, ErrUnsafeArchive)
		}
	}
	return CheckLinks(dest)
}

// cleanEntryName refuses absolute names and any '..' component.
func cleanEntryName(name string) (string, error) {
	n := strings.ReplaceAll(name, "\\", "/")
	if strings.HasPrefix(n, "/") || filepath.IsAbs(name) || (len(n) > 1 && n[1] == ':') {
		return "", fmt.Errorf("extracting %q: absolute path: %w", name, ErrUnsafeArchive)
	}
	if strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("extracting %q: NUL in name: %w", name, ErrUnsafeArchive)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("extracting %q: '..' in path: %w", name, ErrUnsafeArchive)
		}
	}
	return path.Clean(n), nil
}

// checkLinkTarget refuses a symlink whose target is absolute or, resolved
// lexically from the link's directory, leaves the root.
func checkLinkTarget(name, target string) error {
	if target == "" || strings.HasPrefix(target, "/") || filepath.IsAbs(target) {
		return fmt.Errorf("extracting symlink %s -> %q: absolute or empty target: %w", name, target, ErrUnsafeArchive)
	}
	joined := path.Join(path.Dir(name), target)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return fmt.Errorf("extracting symlink %s -> %q: target leaves the workspace: %w", name, target, ErrUnsafeArchive)
	}
	return nil
}

func mkParent(root *os.Root, name string) error {
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating parent of %s: %w", name, err)
		}
	}
	return nil
}

func writeEntry(root *os.Root, name string, mode fs.FileMode, r io.Reader, size int64) (retErr error) {
	// O_EXCL|O_NOFOLLOW-like behaviour: refuse to write through an existing
	// entry (an earlier symlink with the same name).
	if fi, err := root.Lstat(name); err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("extracting %s: would overwrite a %s: %w", name, fi.Mode().Type(), ErrUnsafeArchive)
		}
		if err := root.Remove(name); err != nil {
			return fmt.Errorf("replacing %s: %w", name, err)
		}
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", name, err)
	}
	defer func() {
		if err := f.Close(); err != nil && retErr == nil {
			retErr = fmt.Errorf("closing %s: %w", name, err)
		}
	}()
	if _, err := io.Copy(f, io.LimitReader(r, size)); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// CheckLinks walks dir and refuses any symlink that, resolved through the
// real tree (link chains included), points outside dir. A dangling link is
// allowed only if its target stays inside lexically. It is applied to
// extracted archives and git checkouts alike.
func CheckLinks(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer root.Close()
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walking %s: %w", p, err)
		}
		if d.Type()&fs.ModeSymlink == 0 {
			if d.Type()&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket|fs.ModeCharDevice) != 0 {
				return fmt.Errorf("checking %s: special file: %w", p, ErrUnsafeArchive)
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return fmt.Errorf("checking link %s: %w", p, err)
		}
		rel = filepath.ToSlash(rel)
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("reading link %s: %w", p, err)
		}
		if err := checkLinkTarget(rel, target); err != nil {
			return err
		}
		if _, err := root.Stat(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking symlink %s -> %q: resolves outside the workspace (%v): %w", rel, target, err, ErrUnsafeArchive)
		}
		return nil
	})
}
