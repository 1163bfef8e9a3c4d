package coordinator

import (
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
)

// blobs is a content-addressed file store (blobs/sha256/ab/abcd…) for
// uploaded sources and artifacts; the database keeps only their digests.
type blobs struct{ dir string }

// errDigestMismatch: the bytes received do not have the declared sha256.
var errDigestMismatch = api.WithClass(errors.New("sha256 mismatch"), api.ErrInvalid)

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

func newBlobs(dir string) (*blobs, error) {
	for _, d := range []string{dir, filepath.Join(dir, "tmp"), filepath.Join(dir, "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating blob directory %s: %w", d, err)
		}
	}
	return &blobs{dir: dir}, nil
}

func (b *blobs) path(digest string) string {
	return filepath.Join(b.dir, "sha256", digest[:2], digest)
}

// put copies r (at most limit bytes) into the store, verifies want (when
// not empty) and returns the digest and size.
func (b *blobs) put(r io.Reader, limit int64, want string) (digest string, size int64, retErr error) {
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
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, limit+1))
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
		return "", n, fmt.Errorf("receiving blob: got %s, declared %s: %w", digest, want, errDigestMismatch)
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

// blobGrace protects blobs (and half-written uploads) younger than this
// from sweep: a source is stored before the job that refers to it exists.
const blobGrace = time.Hour

// sweep removes stored blobs that refs does not name and abandoned
// temporary uploads, both only when older than blobGrace before now.
func (b *blobs) sweep(refs map[string]bool, now time.Time) (removed int, bytes int64, err error) {
	cutoff := now.Add(-blobGrace)
	var errs []error
	walk := func(dir string, keep func(name string) bool) {
		ents, rerr := os.ReadDir(dir)
		if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			errs = append(errs, rerr)
		}
		for _, e := range ents {
			if e.IsDir() || keep(e.Name()) {
				continue
			}
			info, ierr := e.Info()
			if ierr != nil || !info.ModTime().Before(cutoff) {
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
		walk(d, func(name string) bool { return !hexDigest.MatchString(name) || refs[name] })
	}
	walk(filepath.Join(b.dir, "tmp"), func(string) bool { return false })
	return removed, bytes, errors.Join(errs...)
}

// open opens a stored blob.
func (b *blobs) open(digest string) (*os.File, error) {
	if !hexDigest.MatchString(digest) {
		return nil, fmt.Errorf("opening blob %q: invalid digest", digest)
	}
	f, err := os.Open(b.path(digest))
	if errors.Is(err, os.ErrNotExist) {
		err = api.WithClass(err, api.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", digest, err)
	}
	return f, nil
}
