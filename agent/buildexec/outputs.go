package buildexec

import (
	"context"
	"crypto/ed25519"
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

// collectArtifacts copies the regular files at or below each pattern
// (workspace-relative paths, shell globs allowed) into outDir. Symlinks are
// never followed and nothing outside the workspace is read: a build cannot
// smuggle a host file out as an artifact.
func collectArtifacts(ws string, patterns []string, outDir string) ([]agent.Artifact, error) {
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	seen := map[string]bool{}
	var out []agent.Artifact
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
				if !d.Type().IsRegular() || seen[p] {
					return nil // directories are walked; symlinks, devices skipped
				}
				seen[p] = true
				src, err := root.Open(p)
				if err != nil {
					return err
				}
				defer src.Close()
				dst := filepath.Join(outDir, p)
				if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
					return err
				}
				f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					return err
				}
				if _, err := io.Copy(f, src); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				out = append(out, agent.Artifact{Name: filepath.ToSlash(p), Path: dst, Kind: api.KindFile})
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("collecting %s: %w", m, err)
			}
		}
	}
	return out, nil
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
