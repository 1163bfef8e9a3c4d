package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// blobData is n reproducible bytes (2.5 MiB crosses a backend's 1 MiB
// chunks twice).
func blobData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func digestOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func putBlob(t *testing.T, s store.Store, data []byte) string {
	t.Helper()
	d, n, err := s.PutBlob(ctx, bytes.NewReader(data), int64(len(data)), digestOf(data))
	must(t, err)
	if d != digestOf(data) || n != int64(len(data)) {
		t.Fatalf("stored %s (%d bytes), want %s (%d)", d, n, digestOf(data), len(data))
	}
	return d
}

func readBlob(t *testing.T, s store.Store, digest string) []byte {
	t.Helper()
	b, err := s.OpenBlob(ctx, digest)
	must(t, err)
	defer b.Close()
	data, err := io.ReadAll(b)
	must(t, err)
	if b.Size() != int64(len(data)) {
		t.Errorf("blob %s: Size %d, read %d bytes", digest, b.Size(), len(data))
	}
	return data
}

func testBlobPut(t *testing.T, s store.Store) {
	data := blobData(5<<19, 1)
	d, n, err := s.PutBlob(ctx, bytes.NewReader(data), 10<<20, "") // no declared digest
	must(t, err)
	if d != digestOf(data) || n != int64(len(data)) {
		t.Fatalf("stored %s (%d bytes), want %s (%d)", d, n, digestOf(data), len(data))
	}
	if got := readBlob(t, s, d); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d stored", len(got), len(data))
	}
	putBlob(t, s, data) // again: not an error, same bytes
	if got := readBlob(t, s, d); !bytes.Equal(got, data) {
		t.Fatal("a blob stored twice reads back differently")
	}
	empty := putBlob(t, s, nil)
	if got := readBlob(t, s, empty); len(got) != 0 {
		t.Errorf("empty blob read %d bytes", len(got))
	}
	for _, bad := range []string{digestOf([]byte("never stored")), "../../etc/passwd", ""} {
		if _, err := s.OpenBlob(ctx, bad); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("opening %q: %v, want ErrNotFound", bad, err)
		}
	}
}

func testBlobRefused(t *testing.T, s store.Store) {
	data := []byte(strings.Repeat("cleanroom ", 100))
	other := digestOf([]byte("something else"))
	_, _, err := s.PutBlob(ctx, bytes.NewReader(data), 1<<20, other)
	if !errors.Is(err, store.ErrDigestMismatch) || !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("declared digest differs: %v, want ErrDigestMismatch (api.ErrInvalid)", err)
	}
	if _, err := s.OpenBlob(ctx, digestOf(data)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a mismatching upload was stored: %v", err)
	}
	big := blobData(3<<20, 2)
	if _, _, err := s.PutBlob(ctx, bytes.NewReader(big), 2<<20, ""); !errors.Is(err, api.ErrTooLarge) {
		t.Fatalf("3 MiB with a 2 MiB limit: %v, want api.ErrTooLarge", err)
	}
	if _, err := s.OpenBlob(ctx, digestOf(big)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a too large upload was stored: %v", err)
	}
	if _, _, err := s.PutBlob(ctx, bytes.NewReader(data), int64(len(data)), ""); err != nil {
		t.Errorf("exactly the limit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.PutBlob(cctx, bytes.NewReader(big), 4<<20, ""); err == nil {
		t.Error("an upload with its context canceled was stored")
	}
}

func testBlobSeek(t *testing.T, s store.Store) {
	data := blobData(5<<19, 3)
	b, err := s.OpenBlob(ctx, putBlob(t, s, data))
	must(t, err)
	defer b.Close()
	if b.Size() != int64(len(data)) {
		t.Fatalf("Size %d, want %d", b.Size(), len(data))
	}
	readAt := func(off int64, whence int, n int, want []byte) {
		t.Helper()
		pos, err := b.Seek(off, whence)
		must(t, err)
		buf := make([]byte, n)
		k, err := io.ReadFull(b, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("reading %d bytes at %d: %v", n, pos, err)
		}
		if !bytes.Equal(buf[:k], want) {
			t.Fatalf("%d bytes at %d differ from the stored ones", n, pos)
		}
	}
	readAt(1<<20-3, io.SeekStart, 10, data[1<<20-3:1<<20+7]) // across a chunk boundary
	readAt(5, io.SeekStart, 4, data[5:9])                    // back to the first chunk
	readAt(2<<20, io.SeekCurrent, 3, data[2<<20+9:2<<20+12])
	readAt(-4, io.SeekEnd, 10, data[len(data)-4:]) // a short read at the end
	if end, err := b.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
		t.Fatalf("seek to the end: %d %v", end, err)
	}
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: %d %v, want io.EOF", n, err)
	}
	if _, err := b.Seek(-1, io.SeekStart); err == nil {
		t.Error("seeking before the start: no error")
	}
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(all, data) {
		t.Fatalf("reading all after seeks: %d bytes, %v", len(all), err)
	}
}

// SweepBlobs removes what keep does not name, only when older than
// olderThan. Blobs are stamped with the wall clock (a file's mtime), so the
// ages here are relative to time.Now.
func testBlobSweep(t *testing.T, s store.Store) {
	kept := putBlob(t, s, []byte("kept by a job"))
	goneData := blobData(3<<19, 4)
	gone := putBlob(t, s, goneData)
	if n, _, err := s.SweepBlobs(ctx, map[string]bool{}, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("sweeping blobs older than an hour ago removed %d (%v), want 0: they are new", n, err)
	}
	n, bytes, err := s.SweepBlobs(ctx, map[string]bool{kept: true}, time.Now().Add(time.Hour))
	must(t, err)
	if n != 1 || bytes != int64(len(goneData)) {
		t.Fatalf("swept %d blobs, %d bytes; want 1, %d", n, bytes, len(goneData))
	}
	if _, err := s.OpenBlob(ctx, gone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("swept blob: %v", err)
	}
	if got := readBlob(t, s, kept); string(got) != "kept by a job" {
		t.Errorf("kept blob reads %q", got)
	}
	putBlob(t, s, goneData) // the same bytes again after a sweep
	if got := readBlob(t, s, gone); len(got) != len(goneData) {
		t.Errorf("a blob stored again after its sweep reads %d bytes", len(got))
	}
}
