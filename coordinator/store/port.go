package store

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cleanroom-ci/cleanroom/api"
)

// A store's whole state moves between backends (SQLite to PostgreSQL) as a
// stream of Records: the source's Export produces them, the target's Import
// consumes them, and Copy joins the two and verifies the result. The stream
// never holds a log or a blob whole: both travel in chunks of at most
// PortChunk bytes.
//
// The order is fixed, so an importer can write as it reads: one
// RecordHeader, then every token, runner and job (jobs oldest first, the
// order the queue claims them), the log chunks (each job's in offset
// order), the egress events in cursor order, the artifact records, the
// chunks of each blob a job or artifact refers to, and one RecordEnd with
// the counts, so a stream cut short is refused rather than half imported.

// PortFormat names the record stream; PortVersion is its version. An
// importer refuses a header of another format or of a newer version.
const (
	PortFormat  = "cleanroom-store"
	PortVersion = 1
)

// PortChunk is the largest Data of a log or blob record.
const PortChunk = 1 << 20

// Record kinds, in stream order.
const (
	RecordHeader   = "header"
	RecordToken    = "token"
	RecordRunner   = "runner"
	RecordJob      = "job"
	RecordLog      = "log"
	RecordEgress   = "egress"
	RecordArtifact = "artifact"
	RecordBlob     = "blob"
	RecordEnd      = "end"
)

// recordOrder is each kind's rank in the stream.
var recordOrder = map[string]int{RecordHeader: 0, RecordToken: 1, RecordRunner: 2, RecordJob: 3, RecordLog: 4,
	RecordEgress: 5, RecordArtifact: 6, RecordBlob: 7, RecordEnd: 8}

// Record is one item of an export: Kind says which one field is set.
type Record struct {
	Kind     string          `json:"kind"`
	Header   *PortHeader     `json:"header,omitempty"`
	Token    *Token          `json:"token,omitempty"`
	Runner   *Runner         `json:"runner,omitempty"`
	Job      *Job            `json:"job,omitempty"`
	Log      *LogChunk       `json:"log,omitempty"`
	Egress   *EgressExport   `json:"egress,omitempty"`
	Artifact *ArtifactExport `json:"artifact,omitempty"`
	Blob     *BlobChunk      `json:"blob,omitempty"`
	End      *PortEnd        `json:"end,omitempty"`
}

// PortHeader opens a stream.
type PortHeader struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// Backend and Schema describe the source ("sqlite", 6), for messages.
	Backend string `json:"backend"`
	Schema  int    `json:"schema"`
}

// LogChunk is stored log bytes of a job at Offset, an offset in the log as
// stored (after truncation, the marker included). A job's chunks follow
// each other without gap from 0 to its LogSize.
type LogChunk struct {
	JobID  string `json:"job_id"`
	Offset int64  `json:"offset"`
	Data   []byte `json:"data"`
}

// EgressExport is a stored egress event: the job and runner of the lease it
// was stored under and its sequence number within the job (what makes an
// agent's retry idempotent). Cursor is the source's cursor, for order and
// messages only: the target hands out its own cursors, in the same order.
type EgressExport struct {
	JobID    string          `json:"job_id"`
	RunnerID string          `json:"runner_id"`
	Seq      int64           `json:"seq"`
	Cursor   int64           `json:"cursor"`
	Event    api.EgressEvent `json:"event"`
}

// ArtifactExport is an artifact record of a job.
type ArtifactExport struct {
	JobID    string   `json:"job_id"`
	Artifact Artifact `json:"artifact"`
}

// BlobChunk is the bytes of blob Digest (hex sha256, Size bytes in all) at
// Offset. A blob's chunks follow each other in order; the last one ends at
// Size (a blob of no bytes is one chunk without Data).
type BlobChunk struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Offset int64  `json:"offset"`
	Data   []byte `json:"data"`
}

// Last says whether c is its blob's last chunk.
func (c *BlobChunk) Last() bool { return c.Offset+int64(len(c.Data)) >= c.Size }

// PortEnd closes a stream with how many records of each kind it held.
type PortEnd struct {
	Counts map[string]int64 `json:"counts"`
	// MissingBlobs are blobs a job or artifact refers to that the source
	// does not hold (lost before the export): not in the stream, reported.
	MissingBlobs []string `json:"missing_blobs,omitempty"`
}

// Porter moves a store's whole state out and in.
//
// Export calls fn for each record of a consistent snapshot, in stream
// order; it stops at fn's first error and returns it. A record's Data is
// the record's own (fn may keep it).
//
// Import reads records with next (ok false: none left) into a store that
// holds no token, runner, job, egress event or artifact yet (else
// ErrTargetNotEmpty, before anything is written). It checks the stream's
// header, order and end counts, gives each egress event a new cursor in
// stream order and each job its place in the queue in stream order, and
// applies nothing unless it reaches RecordEnd: a backend imports the rows
// in one transaction, and stores blobs (content-addressed, so writing one
// twice is harmless) as they come, so a failed import can simply be run
// again.
type Porter interface {
	Export(ctx context.Context, fn func(Record) error) error
	Import(ctx context.Context, next func() (Record, bool, error)) error
}

// ErrTargetNotEmpty: Import into a store that already holds state
// (api.ErrConflict).
var ErrTargetNotEmpty = api.WithClass(errors.New("target store is not empty"), api.ErrConflict)

// ImportCheck follows a stream as an importer reads it: Check each record
// before applying it, and Done when next reports no more. It enforces the
// header, the stream order, the chunking of logs and blobs and the end
// counts, so every backend refuses the same malformed streams.
type ImportCheck struct {
	rank   int
	counts map[string]int64
	ended  bool
	// blob in progress and the next offset expected of it, and the same
	// for the current job's log.
	blob       string
	blobNext   int64
	logJob     string
	logNext    int64
	jobs       map[string]bool
	seenHeader bool
}

// Check verifies that r may come next.
func (c *ImportCheck) Check(r Record) error {
	rank, ok := recordOrder[r.Kind]
	if !ok {
		return fmt.Errorf("importing: unknown record kind %q", r.Kind)
	}
	if c.ended {
		return fmt.Errorf("importing: a %s record after the end", r.Kind)
	}
	if !c.seenHeader && r.Kind != RecordHeader {
		return fmt.Errorf("importing: the stream starts with a %s record, not a header", r.Kind)
	}
	if rank < c.rank || (r.Kind == RecordHeader && c.seenHeader) {
		return fmt.Errorf("importing: a %s record out of order", r.Kind)
	}
	if c.blob != "" && (r.Kind != RecordBlob || r.Blob == nil || r.Blob.Digest != c.blob) {
		return fmt.Errorf("importing: blob %s ends at %d, before its size", c.blob, c.blobNext)
	}
	c.rank = rank
	if c.counts == nil {
		c.counts = map[string]int64{}
		c.jobs = map[string]bool{}
	}
	missing := func() error { return fmt.Errorf("importing: a %s record without its %s", r.Kind, r.Kind) }
	switch r.Kind {
	case RecordHeader:
		h := r.Header
		if h == nil {
			return missing()
		}
		if h.Format != PortFormat {
			return fmt.Errorf("importing: a stream of format %q, not %q", h.Format, PortFormat)
		}
		if h.Version < 1 || h.Version > PortVersion {
			return fmt.Errorf("importing: stream version %d, this build reads 1 to %d", h.Version, PortVersion)
		}
		c.seenHeader = true
	case RecordToken:
		if r.Token == nil {
			return missing()
		}
	case RecordRunner:
		if r.Runner == nil {
			return missing()
		}
	case RecordJob:
		if r.Job == nil {
			return missing()
		}
		if c.jobs[r.Job.ID] {
			return fmt.Errorf("importing: job %s twice", r.Job.ID)
		}
		c.jobs[r.Job.ID] = true
	case RecordLog:
		l := r.Log
		if l == nil {
			return missing()
		}
		if !c.jobs[l.JobID] {
			return fmt.Errorf("importing: a log chunk of job %s, not in the stream", l.JobID)
		}
		if l.JobID != c.logJob {
			c.logJob, c.logNext = l.JobID, 0
		}
		if l.Offset != c.logNext || len(l.Data) == 0 || len(l.Data) > PortChunk {
			return fmt.Errorf("importing: a log chunk of job %s at %d (%d bytes), expected one at %d", l.JobID, l.Offset, len(l.Data), c.logNext)
		}
		c.logNext += int64(len(l.Data))
	case RecordEgress:
		if r.Egress == nil {
			return missing()
		}
		if !c.jobs[r.Egress.JobID] {
			return fmt.Errorf("importing: an egress event of job %s, not in the stream", r.Egress.JobID)
		}
	case RecordArtifact:
		if r.Artifact == nil {
			return missing()
		}
		if !c.jobs[r.Artifact.JobID] {
			return fmt.Errorf("importing: an artifact of job %s, not in the stream", r.Artifact.JobID)
		}
	case RecordBlob:
		b := r.Blob
		if b == nil {
			return missing()
		}
		if c.blob == "" && b.Offset != 0 || c.blob != "" && b.Offset != c.blobNext || len(b.Data) > PortChunk ||
			b.Offset+int64(len(b.Data)) > b.Size || (len(b.Data) == 0 && b.Size != 0) {
			return fmt.Errorf("importing: a chunk of blob %s at %d (%d bytes of %d) out of order", b.Digest, b.Offset, len(b.Data), b.Size)
		}
		c.blob, c.blobNext = b.Digest, b.Offset+int64(len(b.Data))
		if b.Last() {
			c.blob = ""
			c.counts[RecordBlob]++ // blobs, not chunks
		}
		return nil
	case RecordEnd:
		if r.End == nil {
			return missing()
		}
		for _, k := range []string{RecordToken, RecordRunner, RecordJob, RecordLog, RecordEgress, RecordArtifact, RecordBlob} {
			if r.End.Counts[k] != c.counts[k] {
				return fmt.Errorf("importing: the stream holds %d %s records, its end says %d", c.counts[k], k, r.End.Counts[k])
			}
		}
		c.ended = true
		return nil
	}
	c.counts[r.Kind]++
	return nil
}

// Done verifies that the stream reached its end.
func (c *ImportCheck) Done() error {
	if !c.ended {
		return errors.New("importing: the stream ended before its end record (cut short?)")
	}
	return nil
}

// ExportCounter counts what an exporter emits, for its RecordEnd.
type ExportCounter map[string]int64

// Count counts r (a blob when its last chunk goes by) and returns it.
func (c ExportCounter) Count(r Record) Record {
	switch {
	case r.Kind == RecordBlob && !r.Blob.Last():
	case r.Kind != RecordHeader && r.Kind != RecordEnd:
		c[r.Kind]++
	}
	return r
}

// End is the closing record.
func (c ExportCounter) End(missingBlobs []string) Record {
	return Record{Kind: RecordEnd, End: &PortEnd{Counts: c, MissingBlobs: missingBlobs}}
}

// ExportBlobs emits the chunks of each blob of digests that b holds, in
// order, counting them with c, and returns the digests b does not hold.
func ExportBlobs(ctx context.Context, b Blobs, digests []string, c ExportCounter, fn func(Record) error) (missing []string, _ error) {
	for _, d := range digests {
		f, err := b.OpenBlob(ctx, d)
		if errors.Is(err, ErrNotFound) {
			missing = append(missing, d)
			continue
		} else if err != nil {
			return nil, fmt.Errorf("exporting blob %s: %w", d, err)
		}
		err = exportBlob(f, d, c, fn)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return missing, nil
}

func exportBlob(f Blob, digest string, c ExportCounter, fn func(Record) error) error {
	size := f.Size()
	var off int64
	for {
		n := min(size-off, PortChunk)
		data := make([]byte, n)
		if _, err := io.ReadFull(f, data); err != nil {
			return fmt.Errorf("exporting blob %s at %d of %d: %w", digest, off, size, err)
		}
		if err := fn(c.Count(Record{Kind: RecordBlob, Blob: &BlobChunk{Digest: digest, Size: size, Offset: off, Data: data}})); err != nil {
			return err
		}
		if off += n; off >= size {
			return nil
		}
	}
}

// ChunkLog cuts data (stored at offset off of a job's log) into log records
// of at most PortChunk bytes.
func ChunkLog(jobID string, off int64, data []byte, c ExportCounter, fn func(Record) error) error {
	for len(data) > 0 {
		n := min(len(data), PortChunk)
		if err := fn(c.Count(Record{Kind: RecordLog, Log: &LogChunk{JobID: jobID, Offset: off, Data: data[:n:n]}})); err != nil {
			return err
		}
		off, data = off+int64(n), data[n:]
	}
	return nil
}

// RecordApplier is a backend's side of an import: ImportRecords calls
// Apply for every record but blob chunks (the header and end included) and
// PutBlob once per blob, with a reader over its chunks.
type RecordApplier interface {
	Apply(ctx context.Context, r Record) error
	PutBlob(ctx context.Context, digest string, size int64, r io.Reader) error
}

// ImportRecords reads a stream with next, checks it (ImportCheck) and
// hands it to a: the loop every backend's Import shares.
func ImportRecords(ctx context.Context, next func() (Record, bool, error), a RecordApplier) error {
	var check ImportCheck
	for {
		r, ok, err := next()
		if err != nil {
			return fmt.Errorf("reading the export: %w", err)
		}
		if !ok {
			return check.Done()
		}
		if err := check.Check(r); err != nil {
			return err
		}
		if r.Kind != RecordBlob {
			if err := a.Apply(ctx, r); err != nil {
				return err
			}
			continue
		}
		br := &blobReader{chunk: r.Blob, data: r.Blob.Data, next: next, check: &check}
		if err := a.PutBlob(ctx, r.Blob.Digest, r.Blob.Size, br); err != nil {
			return fmt.Errorf("importing blob %s: %w", r.Blob.Digest, err)
		}
		if !br.chunk.Last() || len(br.data) > 0 {
			return fmt.Errorf("importing blob %s: stored before its last byte was read", r.Blob.Digest)
		}
	}
}

// blobReader reads one blob's chunks from the stream.
type blobReader struct {
	chunk *BlobChunk
	data  []byte
	next  func() (Record, bool, error)
	check *ImportCheck
}

func (b *blobReader) Read(p []byte) (int, error) {
	for len(b.data) == 0 {
		if b.chunk.Last() {
			return 0, io.EOF
		}
		r, ok, err := b.next()
		if err != nil {
			return 0, fmt.Errorf("reading the export: %w", err)
		}
		if !ok {
			return 0, fmt.Errorf("the export ends inside blob %s: %w", b.chunk.Digest, io.ErrUnexpectedEOF)
		}
		if err := b.check.Check(r); err != nil {
			return 0, err
		}
		b.chunk, b.data = r.Blob, r.Blob.Data
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}
