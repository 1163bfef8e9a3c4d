package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"slices"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// PortTarget is what Copy needs of the target: Import, and the readers it
// verifies the result through (the ones the coordinator serves from, not
// Export, so a field Export and Import both dropped would show).
type PortTarget interface {
	Porter
	Tokens
	RunnerReader
	JobReader
	LogReader
	EgressReader
	ArtifactReader
	Blobs
}

// CopyProgress is reported as Copy goes: Phase "copy" while records go
// from the source to the target, "verify" while the target is re-read;
// Count records (blobs, not chunks) and Bytes of logs and blobs of Kind
// so far, Done when Kind is complete.
type CopyProgress struct {
	Phase string
	Kind  string
	Count int64
	Bytes int64
	Done  bool
}

// CopyOptions tune Copy.
type CopyOptions struct {
	// Progress, when set, is called at the end of each kind of record and
	// every 10000 records or 64 MiB within one.
	Progress func(CopyProgress)
}

// Resource names of a Report, in order.
const (
	ResTokens    = "tokens"
	ResRunners   = "runners"
	ResJobs      = "jobs"
	ResLogs      = "logs"
	ResEgress    = "egress events"
	ResArtifacts = "artifacts"
	ResBlobs     = "blobs"
)

// ResourceReport is one line of Copy's verification.
type ResourceReport struct {
	Name string
	// Source is how many the source exported, Target how many the target
	// reads back (logs: jobs with a stored log).
	Source, Target int64
	// Bytes are the log or blob bytes exported.
	Bytes int64
	// Digest is a sha256 over the resource as exported; TargetDigest the
	// same over the target's reading. Equal when OK.
	Digest, TargetDigest string
	// Problems names the first differences found.
	Problems []string
}

// OK says whether the target holds the resource exactly.
func (r ResourceReport) OK() bool {
	return r.Source == r.Target && r.Digest == r.TargetDigest && len(r.Problems) == 0
}

// Report is what Copy did and found.
type Report struct {
	Source    PortHeader
	Resources []ResourceReport
	// MissingBlobs are blobs the source's jobs refer to that it did not
	// hold (lost before the copy), so the target lacks them too.
	MissingBlobs []string
}

// OK says whether every resource verified.
func (r Report) OK() bool {
	for _, res := range r.Resources {
		if !res.OK() {
			return false
		}
	}
	return len(r.Resources) > 0
}

// Copy moves from's whole state into to (which must be empty: Import's
// rule) and verifies it by re-reading to through its readers: the same
// tokens, runners and jobs (every field, the queue in the same order), a
// log of the same sha256 per job, the egress events in the same order
// (their new cursors increasing), the same artifact records, and every
// blob re-hashed. An error means the copy failed; a Report that is not OK
// means it completed but the target differs, and says where.
func Copy(ctx context.Context, from Porter, to PortTarget, opts CopyOptions) (Report, error) {
	src := newTally(opts.Progress, "copy")
	recs := make(chan Record)
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	var exportErr error
	go func() {
		defer close(recs)
		exportErr = from.Export(ectx, func(r Record) error {
			select {
			case recs <- r:
				return nil
			case <-ectx.Done():
				return ectx.Err()
			}
		})
	}()
	next := func() (Record, bool, error) {
		r, ok := <-recs
		if !ok {
			if exportErr != nil {
				return r, false, exportErr
			}
			return r, false, nil
		}
		src.add(r)
		return r, true, nil
	}
	importErr := to.Import(ctx, next)
	cancel()
	for range recs {
	}
	if importErr != nil {
		return Report{}, fmt.Errorf("copying the store: %w", importErr)
	}
	if exportErr != nil {
		return Report{}, fmt.Errorf("copying the store: %w", exportErr)
	}
	src.flush()
	rep, err := verify(ctx, src, to, opts.Progress)
	if err != nil {
		return rep, fmt.Errorf("verifying the copy: %w", err)
	}
	return rep, nil
}

// tally is what one side holds: a hash per record, by key, and the
// order of jobs and egress events.
type tally struct {
	header    PortHeader
	missing   []string
	tokens    map[string][32]byte
	runners   map[string][32]byte
	jobs      map[string][32]byte
	jobOrder  []string
	logs      map[string]*logTally
	egress    hash.Hash
	nEgress   int64
	artifacts map[string][32]byte
	blobs     map[string]int64
	blobBytes int64

	progress func(CopyProgress)
	phase    string
	kind     string
	count    int64
	bytes    int64
	lastSent int64
	lastB    int64
}

type logTally struct {
	h    hash.Hash
	size int64
	sum  string
}

func newTally(progress func(CopyProgress), phase string) *tally {
	return &tally{tokens: map[string][32]byte{}, runners: map[string][32]byte{}, jobs: map[string][32]byte{},
		logs: map[string]*logTally{}, egress: sha256.New(), artifacts: map[string][32]byte{}, blobs: map[string]int64{},
		progress: progress, phase: phase}
}

// step counts one record of kind (bytes of data) for progress.
func (t *tally) step(kind string, records, data int64) {
	if kind != t.kind {
		t.flush()
		t.kind, t.count, t.bytes, t.lastSent, t.lastB = kind, 0, 0, 0, 0
	}
	t.count += records
	t.bytes += data
	if t.progress != nil && (t.count-t.lastSent >= 10000 || t.bytes-t.lastB >= 64<<20) {
		t.lastSent, t.lastB = t.count, t.bytes
		t.progress(CopyProgress{Phase: t.phase, Kind: t.kind, Count: t.count, Bytes: t.bytes})
	}
}

// flush reports the kind in progress as done.
func (t *tally) flush() {
	if t.progress != nil && t.kind != "" {
		t.progress(CopyProgress{Phase: t.phase, Kind: t.kind, Count: t.count, Bytes: t.bytes, Done: true})
	}
	t.kind = ""
}

func (t *tally) add(r Record) {
	switch r.Kind {
	case RecordHeader:
		t.header = *r.Header
	case RecordToken:
		t.tokens[r.Token.ID] = canonToken(*r.Token)
		t.step(ResTokens, 1, 0)
	case RecordRunner:
		t.runners[r.Runner.ID] = canonRunner(*r.Runner)
		t.step(ResRunners, 1, 0)
	case RecordJob:
		t.jobs[r.Job.ID] = canonJob(*r.Job)
		t.jobOrder = append(t.jobOrder, r.Job.ID)
		t.step(ResJobs, 1, 0)
	case RecordLog:
		l := t.logs[r.Log.JobID]
		n := int64(0)
		if l == nil {
			l = &logTally{h: sha256.New()}
			t.logs[r.Log.JobID] = l
			n = 1
		}
		l.h.Write(r.Log.Data)
		l.size += int64(len(r.Log.Data))
		t.step(ResLogs, n, int64(len(r.Log.Data)))
	case RecordEgress:
		t.addEgress(r.Egress.Event)
	case RecordArtifact:
		t.artifacts[r.Artifact.JobID+"/"+r.Artifact.Artifact.Name] = canonArtifact(r.Artifact.Artifact)
		t.step(ResArtifacts, 1, 0)
	case RecordBlob:
		n := int64(0)
		if r.Blob.Last() {
			t.blobs[r.Blob.Digest] = r.Blob.Size
			n = 1
		}
		t.blobBytes += int64(len(r.Blob.Data))
		t.step(ResBlobs, n, int64(len(r.Blob.Data)))
	case RecordEnd:
		t.missing = r.End.MissingBlobs
	}
}

func (t *tally) addEgress(e api.EgressEvent) {
	sum := canon(canonEvent(e))
	t.egress.Write(sum[:])
	t.nEgress++
	t.step(ResEgress, 1, 0)
}

// sum is the sha256 of the log as fed so far.
func (l *logTally) digest() string {
	if l.sum == "" {
		l.sum = hex.EncodeToString(l.h.Sum(nil))
	}
	return l.sum
}

// verify re-reads to and compares it with what src exported.
func verify(ctx context.Context, src *tally, to PortTarget, progress func(CopyProgress)) (Report, error) {
	dst := newTally(progress, "verify")
	rep := Report{Source: src.header, MissingBlobs: src.missing}

	toks, err := to.ListTokens(ctx)
	if err != nil {
		return rep, err
	}
	for _, tk := range toks {
		dst.tokens[tk.ID] = canonToken(tk)
		dst.step(ResTokens, 1, 0)
	}
	rep.Resources = append(rep.Resources, compareMaps(ResTokens, src.tokens, dst.tokens))

	runners, err := to.ListRunners(ctx)
	if err != nil {
		return rep, err
	}
	for _, r := range runners {
		dst.runners[r.ID] = canonRunner(r)
		dst.step(ResRunners, 1, 0)
	}
	rep.Resources = append(rep.Resources, compareMaps(ResRunners, src.runners, dst.runners))

	// ListJobs pages newest first; the queue's order is the reverse.
	for off := 0; ; {
		page, err := to.ListJobs(ctx, JobFilter{Limit: 1000, Offset: off})
		if err != nil {
			return rep, err
		}
		for _, j := range page {
			dst.jobs[j.ID] = canonJob(j)
			dst.jobOrder = append(dst.jobOrder, j.ID)
			dst.step(ResJobs, 1, 0)
		}
		if len(page) < 1000 {
			break
		}
		off += len(page)
	}
	slices.Reverse(dst.jobOrder)
	jobs := compareMaps(ResJobs, src.jobs, dst.jobs)
	if !slices.Equal(src.jobOrder, dst.jobOrder) && len(src.jobOrder) == len(dst.jobOrder) {
		jobs.Problems = append(jobs.Problems, "the jobs are not in the same queue order")
	}
	rep.Resources = append(rep.Resources, jobs)

	logs := ResourceReport{Name: ResLogs}
	for _, id := range src.jobOrder {
		want := src.logs[id]
		h := sha256.New()
		var size int64
		for {
			b, err := to.ReadLog(ctx, id, size, PortChunk)
			if err != nil {
				return rep, err
			}
			if len(b) == 0 {
				break
			}
			h.Write(b)
			size += int64(len(b))
		}
		if size > 0 {
			l := &logTally{h: h, size: size}
			dst.logs[id] = l
			dst.step(ResLogs, 1, size)
		}
		switch {
		case want == nil && size == 0:
		case want == nil:
			logs.problem("job %s: the target has a log of %d bytes, the source none", id, size)
		case size != want.size || dst.logs[id].digest() != want.digest():
			logs.problem("job %s: log of %d bytes, sha256 %s; the source's %d bytes, %s", id, size, digestOr(dst.logs[id]), want.size, want.digest())
		}
	}
	logs.Source, logs.Target = int64(len(src.logs)), int64(len(dst.logs))
	for _, l := range src.logs {
		logs.Bytes += l.size
	}
	logs.Digest, logs.TargetDigest = logsDigest(src.logs), logsDigest(dst.logs)
	rep.Resources = append(rep.Resources, logs)

	var zero int64
	last := int64(-1)
	egress := ResourceReport{Name: ResEgress}
	err = to.QueryEgressRecords(ctx, EgressFilter{EgressFilter: api.EgressFilter{After: &zero}}, func(r api.EgressRecord) error {
		if r.Cursor <= last {
			egress.problem("cursor %d after cursor %d", r.Cursor, last)
		}
		last = r.Cursor
		dst.addEgress(r.EgressEvent)
		return nil
	})
	if err != nil {
		return rep, err
	}
	egress.Source, egress.Target = src.nEgress, dst.nEgress
	egress.Digest, egress.TargetDigest = hex.EncodeToString(src.egress.Sum(nil)), hex.EncodeToString(dst.egress.Sum(nil))
	rep.Resources = append(rep.Resources, egress)

	for _, id := range src.jobOrder {
		list, err := to.ListArtifacts(ctx, id)
		if err != nil {
			return rep, err
		}
		for _, a := range list {
			dst.artifacts[id+"/"+a.Name] = canonArtifact(a)
			dst.step(ResArtifacts, 1, 0)
		}
	}
	rep.Resources = append(rep.Resources, compareMaps(ResArtifacts, src.artifacts, dst.artifacts))

	blobs := ResourceReport{Name: ResBlobs, Bytes: src.blobBytes}
	for _, d := range sortedKeys(src.blobs) {
		got, size, err := rehash(ctx, to, d)
		if err != nil {
			blobs.problem("blob %s: %v", d, err)
			continue
		}
		if got != d || size != src.blobs[d] {
			blobs.problem("blob %s: the target's %d bytes hash to %s (the source's: %d bytes)", d, size, got, src.blobs[d])
			continue
		}
		dst.blobs[d] = size
		dst.step(ResBlobs, 1, size)
	}
	blobs.Source, blobs.Target = int64(len(src.blobs)), int64(len(dst.blobs))
	blobs.Digest, blobs.TargetDigest = blobsDigest(src.blobs), blobsDigest(dst.blobs)
	rep.Resources = append(rep.Resources, blobs)
	dst.flush()
	return rep, nil
}

func (r *ResourceReport) problem(format string, args ...any) {
	if len(r.Problems) < 10 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

func digestOr(l *logTally) string {
	if l == nil {
		return "-"
	}
	return l.digest()
}

// rehash reads blob d from b and returns its sha256 and size.
func rehash(ctx context.Context, b Blobs, d string) (string, int64, error) {
	f, err := b.OpenBlob(ctx, d)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// compareMaps reports the records of src that dst lacks or holds
// differently, and those only dst has.
func compareMaps(name string, src, dst map[string][32]byte) ResourceReport {
	r := ResourceReport{Name: name, Source: int64(len(src)), Target: int64(len(dst)), Digest: mapDigest(src), TargetDigest: mapDigest(dst)}
	for _, k := range sortedKeys(src) {
		got, ok := dst[k]
		switch {
		case !ok:
			r.problem("%s missing in the target", k)
		case got != src[k]:
			r.problem("%s differs in the target", k)
		}
	}
	for _, k := range sortedKeys(dst) {
		if _, ok := src[k]; !ok {
			r.problem("%s only in the target", k)
		}
	}
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// mapDigest is a sha256 over the keys and record hashes, in key order.
func mapDigest(m map[string][32]byte) string {
	h := sha256.New()
	for _, k := range sortedKeys(m) {
		v := m[k]
		fmt.Fprintf(h, "%s\x00%x\n", k, v[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func logsDigest(m map[string]*logTally) string {
	h := sha256.New()
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(h, "%s\x00%d\x00%s\n", k, m[k].size, m[k].digest())
	}
	return hex.EncodeToString(h.Sum(nil))
}

func blobsDigest(m map[string]int64) string {
	h := sha256.New()
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(h, "%s\x00%d\n", k, m[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// canon is the sha256 of v's JSON: records are compared by it. Times are
// made UTC first, so two backends that return the same instant in
// different zones agree.
func canon(v any) [32]byte {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	return sha256.Sum256(b.Bytes())
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func canonToken(t Token) [32]byte {
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = t.CreatedAt.UTC(), utc(t.ExpiresAt), utc(t.RevokedAt)
	return canon(t)
}

func canonRunner(r Runner) [32]byte {
	r.CreatedAt, r.LastSeen, r.RevokedAt = r.CreatedAt.UTC(), utc(r.LastSeen), utc(r.RevokedAt)
	return canon(r)
}

func canonJob(j Job) [32]byte {
	j.CreatedAt, j.StartedAt, j.FinishedAt, j.LeaseExpires = j.CreatedAt.UTC(), utc(j.StartedAt), utc(j.FinishedAt), j.LeaseExpires.UTC()
	j.QueuedReason = "" // computed by the coordinator, never stored
	return canon(j)
}

func canonArtifact(a Artifact) [32]byte {
	a.CreatedAt = a.CreatedAt.UTC()
	return canon(a)
}

func canonEvent(e api.EgressEvent) api.EgressEvent {
	e.Time = e.Time.UTC()
	return e
}
