package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// BlobChunkSize is the size of one blob_chunks row: a blob streams in and
// out one chunk at a time, so a coordinator holds at most one chunk of a
// blob in memory whatever the blob's size.
const BlobChunkSize = 1 << 20

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// PutBlob streams r into blob_chunks, one row per BlobChunkSize bytes,
// inside one transaction, hashing as it goes; the blobs row that makes
// the chunks visible is written last, under the digest. A failed, too
// large or mismatching upload rolls back, so there are no partial uploads
// to sweep. A blob already stored keeps its chunks: the new ones are
// dropped and its time refreshed (a source uploaded again must survive the
// next sweep, as a file rewritten would). At most a quarter of the pool's
// connections are uploading at a time (Options.MaxConns); the others wait
// for a turn.
func (s *Store) PutBlob(ctx context.Context, r io.Reader, limit int64, want string) (digest string, size int64, retErr error) {
	select {
	case s.uploads <- struct{}{}:
		defer func() { <-s.uploads }()
	case <-ctx.Done():
		return "", 0, fmt.Errorf("waiting to store a blob: %w", ctx.Err())
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		digest, size, err = s.putBlobTx(ctx, tx, r, limit, want)
		return err
	})
	if err != nil {
		return "", size, err
	}
	return digest, size, nil
}

// putBlobTx is PutBlob in tx (an import stores its blobs in its own
// transaction).
func (s *Store) putBlobTx(ctx context.Context, tx pgx.Tx, r io.Reader, limit int64, want string) (digest string, size int64, _ error) {
	var id int64
	if err := tx.QueryRow(ctx, `SELECT nextval('blob_ids')`).Scan(&id); err != nil {
		return "", size, fmt.Errorf("numbering blob: %w", err)
	}
	h := sha256.New()
	buf := make([]byte, BlobChunkSize)
	size = 0
	lr := io.LimitReader(r, limit+1)
	for n := 0; ; n++ {
		k, err := io.ReadFull(lr, buf)
		if k > 0 {
			size += int64(k)
			if size > limit {
				return "", size, fmt.Errorf("receiving blob of more than %d bytes: %w", limit, api.ErrTooLarge)
			}
			h.Write(buf[:k])
			if _, err := tx.Exec(ctx, `INSERT INTO blob_chunks (blob_id, n, data) VALUES ($1, $2, $3)`, id, n, buf[:k]); err != nil {
				return "", size, fmt.Errorf("storing blob chunk: %w", err)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return "", size, fmt.Errorf("receiving blob: %w", api.ErrTooLarge)
			}
			return "", size, fmt.Errorf("receiving blob: %w", err)
		}
	}
	digest = hex.EncodeToString(h.Sum(nil))
	if want != "" && want != digest {
		return "", size, fmt.Errorf("receiving blob: got %s, declared %s: %w", digest, want, store.ErrDigestMismatch)
	}
	var got int64
	if err := tx.QueryRow(ctx, `INSERT INTO blobs (id, sha256, size, chunk_size, created_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (sha256) DO UPDATE SET created_at = GREATEST(blobs.created_at, EXCLUDED.created_at) RETURNING id`,
		id, digest, size, BlobChunkSize, nanos(s.now())).Scan(&got); err != nil {
		return "", size, fmt.Errorf("storing blob %s: %w", digest, err)
	}
	if got != id {
		if _, err := tx.Exec(ctx, `DELETE FROM blob_chunks WHERE blob_id = $1`, id); err != nil {
			return "", size, fmt.Errorf("dropping a second copy of blob %s: %w", digest, err)
		}
	}
	return digest, size, nil
}

// OpenBlob opens a stored blob for reading one chunk at a time.
func (s *Store) OpenBlob(ctx context.Context, digest string) (store.Blob, error) {
	if !hexDigest.MatchString(digest) {
		return nil, fmt.Errorf("opening blob %q: invalid digest: %w", digest, store.ErrNotFound)
	}
	b := &blob{s: s, ctx: ctx, digest: digest, chunk: -1}
	err := s.pool.QueryRow(ctx, `SELECT id, size, chunk_size FROM blobs WHERE sha256 = $1`, digest).Scan(&b.id, &b.size, &b.chunkSize)
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", digest, err)
	}
	return b, nil
}

// blob reads a stored blob: it keeps the chunk that holds the read
// position and loads another when a read or seek leaves it. It reads with
// the context OpenBlob got (the request's), since io.Reader takes none.
type blob struct {
	s         *Store
	ctx       context.Context
	digest    string
	id, size  int64
	chunkSize int64
	pos       int64
	chunk     int64 // index of data, -1 for none
	data      []byte
}

func (b *blob) Size() int64 { return b.size }

func (b *blob) Read(p []byte) (int, error) {
	if b.pos >= b.size {
		return 0, io.EOF
	}
	n := b.pos / b.chunkSize
	if n != b.chunk {
		b.data, b.chunk = nil, -1
		if err := b.s.pool.QueryRow(b.ctx, `SELECT data FROM blob_chunks WHERE blob_id = $1 AND n = $2`, b.id, n).Scan(&b.data); err != nil {
			return 0, fmt.Errorf("reading chunk %d of blob %s: %w", n, b.digest, err)
		}
		b.chunk = n
	}
	off := b.pos - n*b.chunkSize
	if off >= int64(len(b.data)) {
		return 0, fmt.Errorf("reading chunk %d of blob %s: %d bytes, want more than %d: %w", n, b.digest, len(b.data), off, io.ErrUnexpectedEOF)
	}
	k := copy(p, b.data[off:])
	b.pos += int64(k)
	return k, nil
}

func (b *blob) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.pos
	case io.SeekEnd:
		offset += b.size
	default:
		return b.pos, fmt.Errorf("seeking blob %s: invalid whence %d", b.digest, whence)
	}
	if offset < 0 {
		return b.pos, fmt.Errorf("seeking blob %s: negative position %d", b.digest, offset)
	}
	b.pos = offset
	return offset, nil
}

func (b *blob) Close() error {
	b.data = nil
	return nil
}

// SweepBlobs removes the blobs that keep does not name, stored before
// olderThan, each with its chunks in one transaction that checks the time
// again (an upload of the same bytes meanwhile refreshed it).
func (s *Store) SweepBlobs(ctx context.Context, keep map[string]bool, olderThan time.Time) (removed int, bytes int64, err error) {
	rows, err := s.pool.Query(ctx, `SELECT id, sha256 FROM blobs WHERE created_at < $1 ORDER BY id`, nanos(olderThan))
	if err != nil {
		return 0, 0, fmt.Errorf("listing blobs: %w", err)
	}
	type old struct {
		id     int64
		digest string
	}
	var list []old
	var o old
	if _, err := pgx.ForEachRow(rows, []any{&o.id, &o.digest}, func() error {
		if !keep[o.digest] {
			list = append(list, o)
		}
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("listing blobs: %w", err)
	}
	var errs []error
	for _, o := range list {
		var size int64
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			err := tx.QueryRow(ctx, `DELETE FROM blobs WHERE id = $1 AND created_at < $2 RETURNING size`, o.id, nanos(olderThan)).Scan(&size)
			if err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `DELETE FROM blob_chunks WHERE blob_id = $1`, o.id)
			return err
		})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			errs = append(errs, fmt.Errorf("removing blob %s: %w", o.digest, err))
		default:
			removed++
			bytes += size
		}
	}
	return removed, bytes, errors.Join(errs...)
}
