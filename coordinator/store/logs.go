package store

import "github.com/cleanroom-ci/cleanroom/api"

// The log maths every backend shares: which bytes of an append are new,
// what the cap keeps of them, and how stored chunks make up a read. A
// backend stores a job's log as chunks keyed by their offset in the stored
// log, with the job's next expected offset (LogOffset), stored size and
// truncated flag beside it, and applies these under the job's lock.

// WithDefaults fills a zero MaxBytes (api.DefaultLogLimit) and an empty
// Marker (api.LogTruncatedMarker of the cap).
func (l LogLimits) WithDefaults() LogLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = api.DefaultLogLimit
	}
	if l.Marker == "" {
		l.Marker = api.LogTruncatedMarker(l.MaxBytes)
	}
	return l
}

// FreshLog returns the bytes of data, sent at offset, that come after end
// (the job's next expected offset): none for a retry of what is stored, the
// tail of a chunk overlapping the end, and an *OffsetError for a chunk that
// starts after end (a gap).
func FreshLog(end, offset int64, data []byte) ([]byte, error) {
	switch {
	case offset > end:
		return nil, &OffsetError{Expected: end}
	case offset+int64(len(data)) <= end:
		return nil, nil // already stored
	}
	return data[end-offset:], nil
}

// Keep returns what a log that keeps stored bytes (truncated: the cap was
// reached before) stores of data: all of it below the cap; at the cap what
// fits, then the marker, once; nothing after that. The job's stored size
// grows by len(keep) and its next offset by len(data) either way.
func (l LogLimits) Keep(stored int64, truncated bool, data []byte) (keep []byte, truncatedAfter bool) {
	switch {
	case truncated:
		return nil, true
	case stored+int64(len(data)) > l.MaxBytes:
		room := max(l.MaxBytes-stored, 0)
		return append(append([]byte{}, data[:room]...), l.Marker...), true
	}
	return data, false
}

// LogCollector assembles ReadLog's answer from stored chunks given in
// offset order: the bytes from Offset on, at most Max.
type LogCollector struct {
	Offset int64
	Max    int
	out    []byte
}

// Add adds the chunk stored at off and reports whether more are wanted.
func (c *LogCollector) Add(off int64, data []byte) bool {
	if off < c.Offset {
		if c.Offset-off >= int64(len(data)) {
			return len(c.out) < c.Max
		}
		data = data[c.Offset-off:]
	}
	c.out = append(c.out, data[:min(len(data), c.Max-len(c.out))]...)
	return len(c.out) < c.Max
}

// Bytes returns what was collected.
func (c *LogCollector) Bytes() []byte { return c.out }
