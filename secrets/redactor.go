package secrets

import (
	"fmt"
	"io"
	"sync"
)

// Redactor is an io.Writer that forwards what it is given to another writer
// with every secret (in its common encodings) and known token shape replaced
// by Marker. It is streaming: bytes that might be the start of a match are
// held back until enough of the stream has arrived to decide, so a secret
// split across two writes is still caught (the bug of per-write replacers).
// Call Flush at the end of the stream to release what is held back.
// A Redactor is safe for concurrent use, e.g. by a process's stdout and
// stderr copiers.
type Redactor struct {
	mu            sync.Mutex
	w             io.Writer
	st            stream
	cursor        int64 // absolute offset of the next byte to forward
	lastRedactEnd int64 // end of the last Marker written, -1 if none
	out           []byte
	err           error // sticky error from w
}

// NewRedactor returns a Redactor for values, compiling a new Matcher. When
// many redactors hide the same values, build one Matcher and use
// Matcher.NewRedactor instead.
func NewRedactor(w io.Writer, values [][]byte) *Redactor {
	return NewMatcher(values).NewRedactor(w)
}

// NewRedactor returns a Redactor writing to w that shares m.
func (m *Matcher) NewRedactor(w io.Writer) *Redactor {
	return &Redactor{w: w, st: stream{m: m}, lastRedactEnd: -1}
}

// Write redacts p and forwards everything that can no longer be part of a
// match. It reports len(p) unless the underlying writer failed; after such a
// failure every call returns that error.
func (r *Redactor) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.st.buf = append(r.st.buf, p...)
	r.st.scan()
	r.st.resolve(false)
	r.emit(r.st.safe())
	if err := r.forward(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush decides every undecided match as if the stream ended here and
// forwards all held-back bytes. A secret split across a Flush is not caught,
// so flush only at the end of a stream.
func (r *Redactor) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.st.resolve(true)
	r.emit(r.st.base + int64(len(r.st.buf)))
	r.st.state = 0
	return r.forward()
}

// RedactString hides secrets in s with this redactor's matcher, without
// touching its stream.
func (r *Redactor) RedactString(s string) string {
	return r.st.m.RedactString(s)
}

// emit appends to r.out the bytes before safe, with found spans replaced by
// Marker, and drops from the window what is no longer needed.
func (r *Redactor) emit(safe int64) {
	st := &r.st
	if len(st.found) > 1 {
		st.found = mergeSpans(st.found)
	}
	keep := st.found[:0]
	for _, sp := range st.found {
		if sp.start >= safe {
			keep = append(keep, sp)
			continue
		}
		if sp.end <= r.cursor {
			continue
		}
		if sp.start > r.cursor {
			r.out = append(r.out, st.buf[r.cursor-st.base:sp.start-st.base]...)
			r.cursor = sp.start
		}
		if r.lastRedactEnd != r.cursor {
			r.out = append(r.out, Marker...)
		}
		r.cursor, r.lastRedactEnd = sp.end, sp.end
	}
	st.found = keep
	if r.cursor < safe {
		r.out = append(r.out, st.buf[r.cursor-st.base:safe-st.base]...)
		r.cursor = safe
	}
	// Bytes from safe on may still be needed to confirm a case-sensitive
	// match that starts there; everything before is done.
	drop := int(min(safe, r.cursor) - st.base)
	if drop > 0 {
		n := copy(st.buf, st.buf[drop:])
		st.buf = st.buf[:n]
		st.base += int64(drop)
	}
}

// forward writes the pending output to the underlying writer.
func (r *Redactor) forward() error {
	if len(r.out) == 0 {
		return nil
	}
	_, err := r.w.Write(r.out)
	r.out = r.out[:0]
	if err != nil {
		r.err = fmt.Errorf("writing redacted output: %w", err)
		return r.err
	}
	return nil
}
