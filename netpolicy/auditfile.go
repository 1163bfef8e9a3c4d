package netpolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
)

// AuditFile is the agent's local append-only audit log (DATA_DIR/
// egress.jsonl): one JSON line per event. Each event is one write(2) on an
// O_APPEND descriptor, so the lines of every writer sharing the file — a
// sandbox's network, a job's registry gateway, other jobs — never
// interleave. The file is fsynced by Close, not per event. After a failed
// write nothing more is written (a short write may have left half a line):
// every later Append and Close return that first error.
type AuditFile struct {
	mu  sync.Mutex
	f   *os.File
	err error
}

var errAuditFileClosed = errors.New("audit log closed")

// OpenAuditFile opens (creating, mode 0600) the audit log at path for
// appending.
func OpenAuditFile(path string) (*AuditFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	return &AuditFile{f: f}, nil
}

// Append writes ev as one line.
func (a *AuditFile) Append(ev Event) error {
	b, err := json.Marshal(ev)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	if a.f == nil {
		return errAuditFileClosed
	}
	if err == nil {
		_, err = a.f.Write(append(b, '\n'))
	}
	if err != nil {
		a.err = fmt.Errorf("writing %s: %w", a.f.Name(), err)
	}
	return a.err
}

// Close syncs and closes the file; it returns the first failed write too.
func (a *AuditFile) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return a.err
	}
	err := errors.Join(a.err, a.f.Sync(), a.f.Close())
	a.f = nil
	if err != nil {
		return fmt.Errorf("closing audit log: %w", err)
	}
	return nil
}
