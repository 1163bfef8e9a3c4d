package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// FailSpool makes the spool files named name (a base name: "log",
// "egress.jsonl") behave as on a disk that fills up: after has been written,
// writes fail with ENOSPC; after < 0: creating the file fails. The returned
// function restores the real spool.
func FailSpool(name string, after int64) (restore func()) {
	real := openSpool
	openSpool = func(path string, flag int) (spoolFile, error) {
		if filepath.Base(path) != name {
			return real(path, flag)
		}
		if after < 0 {
			return nil, &os.PathError{Op: "open", Path: path, Err: syscall.ENOSPC}
		}
		f, err := real(path, flag)
		if err != nil {
			return nil, err
		}
		return &fullDisk{spoolFile: f, left: after}, nil
	}
	return func() { openSpool = real }
}

// fullDisk is a spool file with left bytes of room.
type fullDisk struct {
	spoolFile
	mu   sync.Mutex
	left int64
}

func (d *fullDisk) room(n int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := min(int64(n), d.left)
	d.left -= k
	return int(k)
}

func (d *fullDisk) Write(p []byte) (int, error) {
	k := d.room(len(p))
	n, err := d.spoolFile.Write(p[:k])
	if err == nil && k < len(p) {
		err = syscall.ENOSPC
	}
	return n, err
}

func (d *fullDisk) WriteAt(p []byte, off int64) (int, error) {
	k := d.room(len(p))
	n, err := d.spoolFile.WriteAt(p[:k], off)
	if err == nil && k < len(p) {
		err = syscall.ENOSPC
	}
	return n, err
}

// Gatherer exposes the registry to the lint test.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// PendingEvents is how many egress events rep (the Reporter the job loop
// hands an executor) still holds in memory.
func PendingEvents(rep Reporter) int {
	e := rep.(*eventShipper)
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.events)
}
