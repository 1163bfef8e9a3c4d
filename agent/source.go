package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
)

// fetchSource puts the job's source into ws on the host side: the uploaded
// tarball (downloaded under the lease, sha256 checked, extracted safely) or
// a git clone checked out at the exact commit. Links leaving ws are refused
// in both cases.
func (a *Agent) fetchSource(ctx context.Context, job *api.Job, token int64, ws, spool string) error {
	switch job.Source.Kind {
	case api.SourceUpload:
		return a.fetchUpload(ctx, job, token, ws, spool)
	case api.SourceGit:
		if err := gitCheckout(ctx, job.Source.URL, job.Source.Commit, ws); err != nil {
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

// gitCheckout clones url into ws and checks out commit (detached). Only
// plain transports are allowed, no prompts, no submodules, and the agent's
// own git config is not consulted.
func gitCheckout(ctx context.Context, url, commit, ws string) error {
	if strings.HasPrefix(url, "-") {
		return fmt.Errorf("cloning %q: URL must not start with '-'", url)
	}
	run := func(args ...string) (string, error) {
		base := []string{"-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never",
			"-c", "core.symlinks=true", "-c", "advice.detachedHead=false"}
		cmd := exec.CommandContext(ctx, "git", append(base, args...)...)
		cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_ASKPASS=/bin/false")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return strings.TrimSpace(out.String()), err
	}
	if out, err := run("clone", "--quiet", "--no-checkout", "--", url, ws); err != nil {
		return fmt.Errorf("cloning %s: %w: %s", url, err, out)
	}
	if out, err := run("-C", ws, "checkout", "--quiet", "--detach", commit); err != nil {
		return fmt.Errorf("checking out %s: %w: %s", commit, err, out)
	}
	head, err := run("-C", ws, "rev-parse", "HEAD")
	if err != nil || head != commit {
		return fmt.Errorf("checking out %s: HEAD is %q", commit, head)
	}
	return nil
}
