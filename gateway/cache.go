package gateway

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Cache is the agent-wide content-addressed cache of verified tarballs,
// keyed by sha512. Writes are atomic, concurrent fetches of one tarball
// make one upstream request, and the size cap evicts the least recently
// used. No sandbox mounts it; bytes leave it only through the gateway,
// verified again on the way out.
//
// On disk a tarball lives at dir/sha512/<2 hex>/<128 hex>; a partial write
// is dir/tmp/<random> until it is verified and renamed into place. The
// modification time of a cached file is its last use (touched on every
// hit), so the LRU order survives a restart without an index file.
type Cache struct {
	dir      string
	maxBytes int64

	// heldCap bounds the bytes of cached files held in memory by the
	// requests being served (open); beyond it files are sent from disk.
	heldCap int64

	mu      sync.Mutex
	held    int64
	entries map[string]*cacheEntry // by sha512 hex
	size    int64
	flights map[string]*flight
	// opened is what OpenCache removed (partials, evictions to the cap):
	// the first GC reports it, so `cleanroom gc`, which opens the cache to
	// collect it, says what it removed.
	opened GCReport
}

type cacheEntry struct {
	size int64
	used time.Time
	pins int // requests serving it right now: never evicted under them
}

// flight is one upstream fetch in progress: later requests for the same
// key wait for it instead of fetching again.
type flight struct {
	done chan struct{}
	err  error
}

// OpenCache opens (creating) the cache in dir with a size cap in bytes
// (0 or less: no cap). It reads what a previous process left and removes
// its partial writes.
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	for _, d := range []string{dir, filepath.Join(dir, "sha512"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating gateway cache: %w", err)
		}
	}
	c := &Cache{dir: dir, maxBytes: maxBytes, heldCap: maxHeldTotal, entries: map[string]*cacheEntry{}, flights: map[string]*flight{}}
	n, b, err := c.removePartials()
	if err != nil {
		return nil, err
	}
	c.opened.Removed, c.opened.Bytes = n, b
	err = filepath.WalkDir(filepath.Join(dir, "sha512"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		key := d.Name()
		if !validKey(key) || filepath.Base(filepath.Dir(p)) != key[:2] {
			return os.Remove(p) // not ours: never served, so never kept
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		c.entries[key] = &cacheEntry{size: fi.Size(), used: fi.ModTime()}
		c.size += fi.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading gateway cache: %w", err)
	}
	c.mu.Lock()
	rn, rb := c.evictLocked()
	c.opened.Removed += rn
	c.opened.Bytes += rb
	c.mu.Unlock()
	return c, nil
}

// validKey is a lowercase hex sha512.
func validKey(k string) bool {
	if len(k) != 2*sha512.Size {
		return false
	}
	for _, r := range k {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

func (c *Cache) path(key string) string {
	return filepath.Join(c.dir, "sha512", key[:2], key)
}

// Size is the bytes the cache holds now.
func (c *Cache) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Has reports whether the tarball with this sha512 is cached.
func (c *Cache) Has(sum []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[hex.EncodeToString(sum)]
	return ok
}

// pin keeps key from eviction until the returned func is called.
func (c *Cache) pin(key string) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entryLocked(key)
	e.pins++
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		e.pins--
		if e.pins == 0 && c.entries[key] == e && e.size == 0 && e.used.IsZero() {
			delete(c.entries, key) // a pin of a key that never got stored
		}
		c.evictLocked()
	}
}

// entryLocked is key's index entry, created empty (not stored) if missing.
func (c *Cache) entryLocked(key string) *cacheEntry {
	e := c.entries[key]
	if e == nil {
		e = &cacheEntry{}
		c.entries[key] = e
	}
	return e
}

// stored reports whether key has a file (an entry that is not only a pin).
func (c *Cache) stored(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.storedLocked(key)
}

func (c *Cache) storedLocked(key string) bool {
	e := c.entries[key]
	return e != nil && !e.used.IsZero()
}

// open returns the cached file of key, read and verified against its
// sha512: data is the whole file when it is small enough to hold and the
// memory budget of all requests allows it (the bytes sent are then
// exactly the bytes verified), else nil and f is positioned at the start
// after a verifying pass. release gives the memory back; call it (and
// close f) once the bytes are sent. A file that is missing, truncated or
// altered is removed and errNotCached returned, so the caller fetches it
// again.
func (c *Cache) open(key string, sum []byte) (f *os.File, data []byte, size int64, release func(), err error) {
	release = func() {}
	c.mu.Lock()
	ok := c.storedLocked(key)
	c.mu.Unlock()
	if !ok {
		return nil, nil, 0, release, errNotCached
	}
	f, err = os.Open(c.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		c.forget(key)
		return nil, nil, 0, release, errNotCached
	}
	if err != nil {
		return nil, nil, 0, release, fmt.Errorf("opening cached tarball: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, 0, release, fmt.Errorf("opening cached tarball: %w", err)
	}
	size = fi.Size()
	h := sha512.New()
	if size <= maxHeldBytes && c.hold(size) {
		release = sync.OnceFunc(func() { c.hold(-size) })
		data = make([]byte, size)
		if _, err = io.ReadFull(f, data); err == nil {
			h.Write(data)
		}
	} else {
		_, err = io.Copy(h, f)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
	}
	if err != nil || !hashEqual(h, sum) {
		f.Close()
		release()
		c.remove(key)
		return nil, nil, 0, func() {}, errNotCached
	}
	c.touch(key)
	return f, data, size, release, nil
}

// hold reserves n bytes of the memory budget (false: over it), or gives
// -n back.
func (c *Cache) hold(n int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > 0 && c.held+n > c.heldCap {
		return false
	}
	c.held += n
	return true
}

// hashFile is the alg hash of key's cached file (errNotCached when it is
// not there).
func (c *Cache) hashFile(key, alg string) ([]byte, error) {
	if !c.stored(key) {
		return nil, errNotCached
	}
	f, err := os.Open(c.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		c.forget(key)
		return nil, errNotCached
	}
	if err != nil {
		return nil, fmt.Errorf("opening cached tarball: %w", err)
	}
	defer f.Close()
	h := newHash(alg)
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("reading cached tarball: %w", err)
	}
	return h.Sum(nil), nil
}

// maxHeldBytes is the largest cached tarball read whole into memory to be
// verified and sent from the same buffer; larger ones are hashed in one
// pass and sent in a second.
const maxHeldBytes = 32 << 20

// maxHeldTotal is the default memory budget of the tarballs held by all
// requests at once (Cache.heldCap): many concurrent requests of large
// tarballs are served from disk instead of each holding a copy.
const maxHeldTotal = 256 << 20

var errNotCached = errors.New("not cached")

func hashEqual(h hash.Hash, sum []byte) bool {
	return string(h.Sum(nil)) == string(sum)
}

// touch records a use: in memory and as the file's mtime (the LRU order
// after a restart).
func (c *Cache) touch(key string) {
	now := time.Now()
	c.mu.Lock()
	if e := c.entries[key]; e != nil {
		e.used = now
	}
	c.mu.Unlock()
	_ = os.Chtimes(c.path(key), now, now)
}

// forget drops key from the index (its file is already gone).
func (c *Cache) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil {
		c.size -= e.size
		e.size, e.used = 0, time.Time{}
		if e.pins == 0 {
			delete(c.entries, key)
		}
	}
}

// remove deletes key's file and forgets it.
func (c *Cache) remove(key string) {
	_ = os.Remove(c.path(key))
	c.forget(key)
}

// tempFile is a partial write in dir/tmp.
func (c *Cache) tempFile() (*os.File, error) {
	f, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "part-")
	if err != nil {
		return nil, fmt.Errorf("creating cache file: %w", err)
	}
	return f, nil
}

// commit renames a verified temp file into place under key.
func (c *Cache) commit(tmp string, key string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(c.path(key)), 0o700); err != nil {
		return fmt.Errorf("storing cached tarball: %w", err)
	}
	if err := os.Rename(tmp, c.path(key)); err != nil {
		return fmt.Errorf("storing cached tarball: %w", err)
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entryLocked(key)
	c.size += size - e.size
	e.size, e.used = size, now
	c.evictLocked()
	return nil
}

// evictLocked removes the least recently used unpinned files until the
// cache fits its cap.
func (c *Cache) evictLocked() (removed int, bytes int64) {
	if c.maxBytes <= 0 || c.size <= c.maxBytes {
		return 0, 0
	}
	keys := make([]string, 0, len(c.entries))
	for k, e := range c.entries {
		if e.pins == 0 && !e.used.IsZero() {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b string) int { return c.entries[a].used.Compare(c.entries[b].used) })
	for _, k := range keys {
		if c.size <= c.maxBytes {
			break
		}
		e := c.entries[k]
		if err := os.Remove(c.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		c.size -= e.size
		removed++
		bytes += e.size
		delete(c.entries, k)
	}
	return removed, bytes
}

// do runs fetch once for concurrent callers with the same key: the first
// runs it, the others wait for its result (and then read the cache).
func (c *Cache) do(ctx context.Context, key string, fetch func() error) error {
	c.mu.Lock()
	if fl, ok := c.flights[key]; ok {
		c.mu.Unlock()
		select {
		case <-fl.done:
			return fl.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fl := &flight{done: make(chan struct{})}
	c.flights[key] = fl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.flights, key)
		c.mu.Unlock()
		close(fl.done)
	}()
	fl.err = fetch()
	return fl.err
}

// partialAge is how long a partial write must have been left untouched
// before it is removed: a fetch writes to it continuously (and the upstream
// client gives up long before), so an older one was left by a crash, while
// a younger one may belong to a fetch of this or another process.
const partialAge = 10 * time.Minute

// removePartials deletes the partial writes in dir/tmp no fetch is writing.
func (c *Cache) removePartials() (int, int64, error) {
	ents, err := os.ReadDir(filepath.Join(c.dir, "tmp"))
	if err != nil {
		return 0, 0, fmt.Errorf("reading gateway cache: %w", err)
	}
	var n int
	var bytes int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !strings.HasPrefix(e.Name(), "part-") || time.Since(fi.ModTime()) < partialAge {
			continue
		}
		if os.Remove(filepath.Join(c.dir, "tmp", e.Name())) == nil {
			n++
			bytes += fi.Size()
		}
	}
	return n, bytes, nil
}

// GCReport says what GC removed.
type GCReport struct {
	Removed int
	Bytes   int64
	Kept    int
	Size    int64
}

// GC removes partial writes and evicts least recently used entries down to
// the cap (cleanroom gc).
func (c *Cache) GC(ctx context.Context) (GCReport, error) {
	if err := ctx.Err(); err != nil {
		return GCReport{}, err
	}
	n, b, err := c.removePartials()
	if err != nil {
		return GCReport{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rn, rb := c.evictLocked()
	r := GCReport{Removed: c.opened.Removed + n + rn, Bytes: c.opened.Bytes + b + rb, Size: c.size}
	c.opened = GCReport{}
	for _, e := range c.entries {
		if !e.used.IsZero() {
			r.Kept++
		}
	}
	return r, nil
}
