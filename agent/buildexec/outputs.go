package buildexec

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// This file holds what a job leaves behind: artifact copies, the SBOM and
// the signed provenance.

func (e *Executor) writeProvenance(ctx context.Context, job *api.Job, image string, lf *supplychain.Lockfile, subjects []supplychain.Artifact, started time.Time, path string) error {
	spec := map[string]any{
		"build":           job.Spec.Build,
		"artifacts":       job.Spec.Artifacts,
		"secrets":         job.Spec.Secrets,
		"install_scripts": job.Spec.InstallScripts,
		"network":         job.Spec.Network,
		"image":           image,
	}
	src := supplychain.Source{}
	switch job.Source.Kind {
	case api.SourceGit:
		src.GitURL, src.Commit = job.Source.URL, job.Source.Commit
	default:
		src.UploadSHA256 = job.Source.SHA256
	}
	stmt, err := supplychain.Provenance(supplychain.ProvenanceInput{
		Artifacts:       subjects,
		Source:          src,
		JobSpec:         normalize(spec),
		NodeImage:       image,
		NodeImageDigest: e.imageDigest(ctx, image),
		LockfileName:    filepath.Base(lf.File),
		LockfileSHA256:  lf.SHA256,
		BuilderID:       e.cfg.BuilderID,
		JobID:           job.ID,
		StartedOn:       started,
		FinishedOn:      time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	env, err := supplychain.SignProvenance(stmt, e.cfg.Signing, supplychain.KeyID(e.cfg.Signing.Public().(ed25519.PublicKey)))
	if err != nil {
		return err
	}
	return os.WriteFile(path, env, 0o644)
}

func (e *Executor) imageDigest(ctx context.Context, ref string) string {
	e.imageMu.Lock()
	defer e.imageMu.Unlock()
	if d, ok := e.digests[ref]; ok {
		return d
	}
	d, err := e.sandboxes.ImageDigest(ctx, ref)
	if err != nil {
		return ""
	}
	e.digests[ref] = d
	return d
}

func writeSBOM(ws string, lf *supplychain.Lockfile, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := supplychain.SBOM(ws, lf, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ArtifactLimits bound what a job's artifacts may take on the build host,
// where the agent copies them before the upload. They are checked before a
// byte is copied.
type ArtifactLimits struct {
	// MaxBytes is the total size of a job's artifacts, counted by the files'
	// apparent sizes (a sparse file counts whole: its copy is dense); 0 means
	// the job's workspace disk limit.
	MaxBytes int64
	// MaxFiles is the number of artifact files; 0 means DefaultArtifactFiles.
	MaxFiles int
}

// DefaultArtifactFiles is the number of artifact files a job may have when
// the agent's config says nothing.
const DefaultArtifactFiles = 10000

// collectArtifacts copies the regular files at or below each pattern
// (workspace-relative paths, shell globs allowed) into outDir, hashing them
// as they stream. Symlinks are never followed and nothing outside the
// workspace is read: a build cannot smuggle a host file out as an artifact.
// Each artifact carries the sha256 computed while it was copied. Every file is listed and checked against lim first (names without
// control characters, count, total apparent size), so a build that
// exceeds them copies nothing; the copy stops when ctx ends.
func collectArtifacts(ctx context.Context, ws string, patterns []string, outDir string, lim ArtifactLimits) ([]agent.Artifact, error) {
	root, err := os.OpenRoot(ws)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	files, err := listArtifacts(ctx, root, patterns, lim)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, err
	}
	out := make([]agent.Artifact, 0, len(files))
	for _, p := range files {
		c, err := copyArtifact(ctx, root, p, outDir)
		if err != nil {
			return nil, fmt.Errorf("collecting %s: %w", p.name, err)
		}
		out = append(out, c)
	}
	return out, nil
}

type artifactFile struct {
	name string // workspace-relative, slash-separated
	size int64  // apparent size when listed
}

// listArtifacts resolves the patterns to regular files and checks them
// against lim, before anything is copied.
func listArtifacts(ctx context.Context, root *os.Root, patterns []string, lim ArtifactLimits) ([]artifactFile, error) {
	maxFiles := lim.MaxFiles
	if maxFiles <= 0 {
		maxFiles = DefaultArtifactFiles
	}
	seen := map[string]bool{}
	var files []artifactFile
	var total int64
	for _, pat := range patterns {
		clean := filepath.Clean(strings.TrimSuffix(pat, "/"))
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("artifact path %q leaves the workspace", pat)
		}
		matches, err := fs.Glob(root.FS(), clean)
		if err != nil {
			return nil, fmt.Errorf("artifact pattern %q: %w", pat, err)
		}
		for _, m := range matches {
			err := fs.WalkDir(root.FS(), m, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if !d.Type().IsRegular() || seen[p] {
					return nil // directories are walked; symlinks, devices skipped
				}
				if api.HasUnsafeRune(p) { // the coordinator's rule, checked before anything is copied
					return fmt.Errorf("artifact name %q has a control or format character: refused", p)
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				seen[p] = true
				total += info.Size()
				files = append(files, artifactFile{name: filepath.ToSlash(p), size: info.Size()})
				if len(files) > maxFiles {
					return fmt.Errorf("more than %d artifact files (artifacts.max_files)", maxFiles)
				}
				if total > lim.MaxBytes {
					return fmt.Errorf("artifacts larger than %s (artifacts.max_bytes) at %s (%s)", api.ByteSize(lim.MaxBytes), p, api.ByteSize(info.Size()))
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("collecting %s: %w", m, err)
			}
		}
	}
	return files, nil
}

// copyArtifact copies one listed file into outDir, hashing it on the way,
// and refuses it if it grew since it was listed.
func copyArtifact(ctx context.Context, root *os.Root, a artifactFile, outDir string) (agent.Artifact, error) {
	src, err := root.Open(filepath.FromSlash(a.name))
	if err != nil {
		return agent.Artifact{}, err
	}
	defer src.Close()
	dst := filepath.Join(outDir, filepath.FromSlash(a.name))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return agent.Artifact{}, err
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return agent.Artifact{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, src}, a.size+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > a.size {
		err = fmt.Errorf("grew past its listed %d bytes while it was copied", a.size)
	}
	if err != nil {
		return agent.Artifact{}, err
	}
	return agent.Artifact{Name: a.name, Path: dst, Kind: api.KindFile, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// ctxReader ends a copy when its context does.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// normalize turns typed values into plain JSON values for the provenance's
// external parameters (structpb accepts only those).
func normalize(v map[string]any) map[string]any {
	out := map[string]any{}
	for k, x := range v {
		switch t := x.(type) {
		case []string:
			l := make([]any, len(t))
			for i := range t {
				l[i] = t[i]
			}
			out[k] = l
		case api.Build:
			if len(t.Argv) > 0 {
				l := make([]any, len(t.Argv))
				for i := range t.Argv {
					l[i] = t.Argv[i]
				}
				out[k] = l
			} else {
				out[k] = t.Script
			}
		case api.InstallScripts:
			allow := make([]any, len(t.Allow))
			for i := range t.Allow {
				allow[i] = t.Allow[i]
			}
			out[k] = map[string]any{"allow": allow, "all": t.All}
		case api.NetworkSpec:
			extra := make([]any, len(t.Extra))
			for i := range t.Extra {
				extra[i] = t.Extra[i]
			}
			out[k] = map[string]any{"extra": extra, "on_violation": t.OnViolation}
		default:
			out[k] = x
		}
	}
	return out
}
