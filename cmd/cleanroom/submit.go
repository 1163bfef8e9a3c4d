package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/tarball"
)

// Exit codes of `submit --wait` besides the build's own: a canceled job
// exits 3, a lost one 4.
const (
	exitCanceled = 3
	exitLost     = 4
)

func init() {
	var gitURL, commit, specPath string
	var wait bool
	cmd := &cobra.Command{
		Use:   "submit DIR | --git URL --commit SHA",
		Short: "Submit a build job (a project directory, or a git commit)",
		Long: `Submit a job. With DIR, the directory is packed as tar.gz (node_modules and .git
left out), uploaded with its sha256, and the job spec is read from
DIR/cleanroom.yaml unless --spec is given. With --git, the agent clones URL and
checks out the exact --commit; --spec is then required (or ./cleanroom.yaml).

With --wait the live log is followed, printed as "cleanroom logs" prints it
(see its --help), and the command exits with the build's exit code (0 on
success; 3 if the job was canceled, 4 if it was lost).`,
		Args: cobra.MaximumNArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if (len(args) == 1) == (gitURL != "") {
			return errors.New("give either a directory or --git URL --commit SHA")
		}
		if specPath == "" {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			specPath = filepath.Join(dir, "cleanroom.yaml")
		}
		spec, err := readSpec(specPath)
		if err != nil {
			return err
		}
		cl, err := cf.client()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		var job api.Job
		if gitURL != "" {
			src := api.Source{Kind: api.SourceGit, URL: gitURL, Commit: commit}
			if err := src.Validate(); err != nil {
				return err
			}
			job, err = cl.SubmitGit(ctx, spec, src)
		} else {
			job, err = submitDir(ctx, cl, args[0], spec)
		}
		if err != nil {
			return fmt.Errorf("submitting: %w", err)
		}
		if !wait {
			if cf.json {
				return printJSON(job)
			}
			fmt.Println(job.ID)
			return nil
		}
		fmt.Fprintf(os.Stderr, "job %s submitted; following its log\n", job.ID)
		return followAndExit(ctx, cl, job.ID, cf.json, false)
	}
	f := cmd.Flags()
	f.StringVar(&gitURL, "git", "", "git URL of the source (instead of DIR)")
	f.StringVar(&commit, "commit", "", "full commit id to build (with --git)")
	f.StringVar(&specPath, "spec", "", "job spec file (default DIR/cleanroom.yaml)")
	f.BoolVar(&wait, "wait", false, "follow the log and exit with the job's exit code")
	rootCmd.AddCommand(cmd)
}

// readSpec reads and validates a cleanroom.yaml (unknown keys are errors).
func readSpec(path string) (api.JobSpec, error) {
	var spec api.JobSpec
	b, err := os.ReadFile(path)
	if err != nil {
		return spec, fmt.Errorf("reading job spec: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("parsing job spec %s: %w", path, err)
	}
	if err := spec.Validate(); err != nil {
		return spec, fmt.Errorf("job spec %s: %w", path, err)
	}
	return spec, nil
}

// packDir writes DIR as tar.gz to w, leaving out node_modules and .git at
// any depth and anything but files, directories and symlinks.
func packDir(dir string, w io.Writer) error {
	return tarball.WriteDir(w, dir, tarball.Options{Gzip: true, SkipDirs: []string{"node_modules", ".git"}})
}

func submitDir(ctx context.Context, cl *api.Client, dir string, spec api.JobSpec) (_ api.Job, retErr error) {
	tmp, err := os.CreateTemp("", "cleanroom-src-*.tar.gz")
	if err != nil {
		return api.Job{}, fmt.Errorf("creating temporary archive: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	h := sha256.New()
	if err := packDir(dir, io.MultiWriter(tmp, h)); err != nil {
		return api.Job{}, err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return api.Job{}, fmt.Errorf("sizing archive: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return api.Job{}, fmt.Errorf("rewinding archive: %w", err)
	}
	var r io.Reader = tmp
	if isTerminal(os.Stderr) {
		bar := progressbar.NewOptions64(size, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("uploading"), progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(65*time.Millisecond))
		defer bar.Finish()
		r = io.TeeReader(tmp, bar)
	}
	return cl.SubmitUpload(ctx, spec, hex.EncodeToString(h.Sum(nil)), r)
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// followAndExit streams the job's log (reconnecting from the last offset if
// the connection drops) to logWriter(raw) and turns the job's end into an
// exit code.
func followAndExit(ctx context.Context, cl *api.Client, id string, asJSON, raw bool) error {
	w, done := logWriter(raw)
	defer done()
	var off int64
	for {
		n, err := cl.ReadLog(ctx, id, off, true, w)
		off += n
		if ctx.Err() != nil {
			return ctx.Err()
		}
		j, jerr := cl.GetJob(ctx, id)
		if jerr == nil && api.Terminal(j.State) && err == nil {
			if n2, _ := cl.ReadLog(ctx, id, off, false, w); n2 > 0 {
				off += n2
			}
			if err := done(); err != nil {
				return fmt.Errorf("printing log of %s: %w", id, err)
			}
			return jobExit(j, asJSON)
		}
		if err != nil && !api.Retryable(err) {
			return err
		}
		time.Sleep(time.Second)
	}
}

func jobExit(j api.Job, asJSON bool) error {
	if asJSON {
		if err := printJSON(j); err != nil {
			return err
		}
	}
	switch j.State {
	case api.StateSucceeded:
		return nil
	case api.StateCanceled:
		return &exitError{code: exitCanceled, msg: fmt.Sprintf("job %s canceled: %s", j.ID, api.Printable(j.Reason))}
	case api.StateLost:
		return &exitError{code: exitLost, msg: fmt.Sprintf("job %s lost: %s", j.ID, api.Printable(j.Reason))}
	}
	code := 1
	if j.ExitCode != nil && *j.ExitCode > 0 && *j.ExitCode < 256 {
		code = *j.ExitCode
	}
	return &exitError{code: code, msg: fmt.Sprintf("job %s failed: %s", j.ID, api.Printable(j.Reason))}
}
