// Package fileblobs owns the blob store on a local disk: content-addressed
// files (sha256/ab/abcd…) under one directory, written through a temporary
// file and renamed, so a reader never sees a partial blob. The SQLite store
// keeps its blobs here, beside the database file.
package fileblobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// Dir is a blob store in a directory; it implements store.Blobs.
type Dir struct{ dir string }

var _ store.Blobs = (*Dir)(nil)

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Open creates (if needed) and opens the blob store in dir.
func Open(dir string) (*Dir, error) {
	for _, d := range []string{dir, filepath.Join(dir, "tmp"), filepath.Join(dir, "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating blob directory %s: %w", d, err)
		}
	}
	return &Dir{dir: dir}, nil
}

func (b *Dir) path(digest string) string {
	return filepath.Join(b.dir, "sha256", digest[:2], digest)
}

// PutBlob copies r (at most limit bytes) into the store, verifies want (when
// not empty) and returns the digest and size.
func (b *Dir) PutBlob(ctx context.Context, r io.Reader, limit int64, want string) (digest string, size int64, retErr error) {
	tmp, err := os.CreateTemp(filepath.Join(b.dir, "tmp"), "up-*")
	if err != nil {
		return "", 0, fmt.Errorf("creating temporary blob: %w", err)
	}
	defer func() {
		tmp.Close()
		if retErr != nil {
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(ctxReader{ctx, r}, limit+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", n, fmt.Errorf("receiving blob: %w", api.ErrTooLarge)
		}
		return "", n, fmt.Errorf("receiving blob: %w", err)
	}
	if n > limit {
		return "", n, fmt.Errorf("receiving blob of more than %d bytes: %w", limit, api.ErrTooLarge)
	}
	digest = hex.EncodeToString(h.Sum(nil))
	if want != "" && want != digest {
		return "", n, fmt.Errorf("receiving blob: got %s, declared %s: %w", digest, want, store.ErrDigestMismatch)
	}
	if err := tmp.Sync(); err != nil {
		return "", n, fmt.Errorf("syncing blob: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", n, fmt.Errorf("closing blob: %w", err)
	}
	dst := b.path(digest)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", n, fmt.Errorf("creating blob directory: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", n, fmt.Errorf("storing blob %s: %w", digest, err)
	}
	return digest, n, nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// SweepBlobs removes stored blobs that keep does not name and abandoned
// temporary uploads, both only when last written before olderThan.
func (b *Dir) SweepBlobs(_ context.Context, keep map[string]bool, olderThan time.Time) (removed int, bytes int64, err error) {
	var errs []error
	walk := func(dir string, skip func(name string) bool) {
		ents, rerr := os.ReadDir(dir)
		if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			errs = append(errs, rerr)
		}
		for _, e := range ents {
			if e.IsDir() || skip(e.Name()) {
				continue
			}
			info, ierr := e.Info()
			if ierr != nil || !info.ModTime().Before(olderThan) {
				continue
			}
			if rerr := os.Remove(filepath.Join(dir, e.Name())); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, rerr)
				continue
			}
			removed++
			bytes += info.Size()
		}
	}
	shards, _ := filepath.Glob(filepath.Join(b.dir, "sha256", "??"))
	for _, d := range shards {
		walk(d, func(name string) bool { return !hexDigest.MatchString(name) || keep[name] })
	}
	walk(filepath.Join(b.dir, "tmp"), func(string) bool { return false })
	return removed, bytes, errors.Join(errs...)
}

// file is an open blob file.
type file struct {
	*os.File
	size int64
}

func (f file) Size() int64 { return f.size }

// OpenBlob opens a stored blob.
func (b *Dir) OpenBlob(_ context.Context, digest string) (store.Blob, error) {
	if !hexDigest.MatchString(digest) {
		return nil, fmt.Errorf("opening blob %q: invalid digest: %w", digest, store.ErrNotFound)
	}
	f, err := os.Open(b.path(digest))
	if errors.Is(err, os.ErrNotExist) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", digest, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening blob %s: %w", digest, err)
	}
	return file{f, st.Size()}, nil
}
