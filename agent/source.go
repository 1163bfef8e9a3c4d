package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cleanroom-ci/cleanroom/api"
)

// ErrGitUnsupported: the executor cannot fetch git sources in a cage
// (it does not implement SourceFetcher), so this agent refuses them rather
// than cloning as root on the host's network.
var ErrGitUnsupported = errors.New("git sources are not supported by this runner's executor")

// fetchSource puts the job's source into ws on the host side: the uploaded
// tarball (downloaded under the lease, sha256 checked, extracted safely) or
// a git checkout at the exact commit, made by the executor in its cage
// (SourceFetcher). Links leaving ws are refused in both cases.
func (a *Agent) fetchSource(ctx context.Context, job *api.Job, token int64, ws, spool string, out io.Writer, rep Reporter) error {
	switch job.Source.Kind {
	case api.SourceUpload:
		return a.fetchUpload(ctx, job, token, ws, spool)
	case api.SourceGit:
		f, ok := a.exec.(SourceFetcher)
		if !ok {
			return fmt.Errorf("fetching source: %w", ErrGitUnsupported)
		}
		if err := f.FetchGit(ctx, job, ws, out, rep); err != nil {
			return err
		}
		return CheckLinks(ws)
	}
	return fmt.Errorf("fetching source: unknown kind %q", job.Source.Kind)
}

func (a *Agent) fetchUpload(ctx context.Context, job *api.Job, token int64, ws, spool string) (retErr error) {
	tarPath := filepath.Join(spool, "source.tar.gz")
	f, err := os.OpenFile(tarPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating source file: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(tarPath)
	}()
	h := sha256.New()
	err = a.retry(ctx, "downloading source", func() error {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		h.Reset()
		_, err := a.client.DownloadSource(ctx, job.ID, token, io.MultiWriter(f, h))
		return err
	})
	if err != nil {
		return fmt.Errorf("downloading source: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != job.Source.SHA256 {
		return fmt.Errorf("checking source: sha256 %s, job says %s", got, job.Source.SHA256)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewinding source: %w", err)
	}
	if err := ExtractTarGz(f, ws, a.ExtractLimits); err != nil {
		return fmt.Errorf("extracting source: %w", err)
	}
	return nil
}
