package netpolicy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Two writers sharing one audit log (a job's network and its registry
// gateway, or two jobs) append whole lines only; nothing is written once a
// file is closed.
func TestAuditFilesShareOneLogLineByLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "egress.jsonl")
	a, err := OpenAuditFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenAuditFile(path)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 3000)
	var wg sync.WaitGroup
	for i, f := range []*AuditFile{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if err := f.Append(Event{Proto: []string{"tcp", "http"}[i], Domain: long, Verdict: VerdictDeny}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, f := range []*AuditFile{a, b} {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Append(Event{}); !errors.Is(err, errAuditFileClosed) {
		t.Errorf("Append after Close = %v, want errAuditFileClosed", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, l := range lines {
		var ev Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Domain != long {
			t.Fatalf("a line is not one whole event: %.80q (%v)", l, err)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}
