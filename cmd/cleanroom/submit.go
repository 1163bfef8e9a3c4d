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
	"slices"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/sourcepack"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

func init() {
	var gitURL, commit, specPath string
	var wait, dryRun bool
	var fo followOpts
	cmd := &cobra.Command{
		Use:   "submit DIR | --git URL --commit SHA",
		Short: "Submit a build job (a project directory, or a git commit)",
		Long: `Submit a job. With DIR, the directory is packed as tar.gz and uploaded with its
sha256; the job spec is read from DIR/cleanroom.yaml unless --spec is given.
With --git, the agent clones URL and checks out the exact --commit; --spec is
then required (or ./cleanroom.yaml).

What of DIR is uploaded (docs/cli.md, "What submit uploads"): everything but
node_modules and .git; what .gitignore files (at every level) and a
.cleanroomignore at the root ignore (a .cleanroomignore rule wins over
.gitignore, so "!generated/" re-includes); .env and .env.* files (but
.env.example, .env.sample, .env.template); .npmrc files that hold credentials;
and what the spec's artifacts name (a stale dist/ is the build's output, made
afresh). The size and file count are printed on stderr; --dry-run lists what
would be sent and what is left out and why, and sends nothing.

Before uploading, the lockfile gate the agents run (the same code and
policy, with the registries the online runners report, GET /v1/policy)
checks package-lock.json, so a lockfile from another registry fails here in
a second. With no runner online that reported its registries the check is
skipped with a note (the agent still runs it).

With --wait the live log is followed, printed as "cleanroom logs" prints it
(see its --help); while the job is queued the reason is printed on stderr
(no runner with its labels, none with its resources, all busy), again when
it changes. An unreachable coordinator is retried with backoff for
--retry-for. With --json the log goes to stderr and one JSON object to
stdout: {"id", "state", "exit_code" (the build's), "reason", "artifacts",
"cleanroom_exit" (this command's exit code), "error"}.

` + exitCodeHelp,
		Args: cobra.MaximumNArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if (len(args) == 1) == (gitURL != "") {
			return usagef("give either a directory or --git URL --commit SHA")
		}
		if dryRun && gitURL != "" {
			return usagef("--dry-run lists what of a directory would be uploaded; it does not apply to --git")
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
			return usageError{err}
		}
		var plan *sourcepack.Plan
		if len(args) == 1 {
			if plan, err = sourcepack.Select(args[0], spec.Artifacts); err != nil {
				return usageError{err}
			}
			if dryRun {
				return printPlan(plan, cf.json)
			}
		}
		cl, err := cf.client()
		if err != nil {
			return usageError{err}
		}
		ctx := cmd.Context()
		var job api.Job
		if gitURL != "" {
			src := api.Source{Kind: api.SourceGit, URL: gitURL, Commit: commit}
			if err := src.Validate(); err != nil {
				return usageError{err}
			}
			job, err = cl.SubmitGit(ctx, spec, src)
		} else {
			if err := lockfileGate(ctx, cl, plan); err != nil {
				return err
			}
			job, err = submitDir(ctx, cl, plan, spec)
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
		fmt.Fprintf(os.Stderr, "cleanroom: job %s submitted; following its log\n", job.ID)
		fo.json = cf.json
		return followAndExit(ctx, cl, job.ID, fo)
	}
	f := cmd.Flags()
	f.StringVar(&gitURL, "git", "", "git URL of the source (instead of DIR)")
	f.StringVar(&commit, "commit", "", "full commit id to build (with --git)")
	f.StringVar(&specPath, "spec", "", "job spec file (default DIR/cleanroom.yaml)")
	f.BoolVar(&wait, "wait", false, "follow the log and exit with the job's exit code")
	f.BoolVar(&dryRun, "dry-run", false, "list what would be uploaded and what is left out, and send nothing")
	fo.addFlags(cmd)
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

// printPlan is --dry-run's output: what would be uploaded, then what is
// left out and why.
func printPlan(p *sourcepack.Plan, asJSON bool) error {
	if asJSON {
		return printJSON(struct {
			Files    int                `json:"files"`
			Bytes    int64              `json:"bytes"`
			Included []sourcepack.Entry `json:"included"`
			Left     []sourcepack.Entry `json:"left_out"`
		}{p.Files, p.Bytes, p.Included, p.Left})
	}
	fmt.Printf("would upload %d files, %s (before compression):\n", p.Files, api.ByteSize(p.Bytes))
	for _, e := range p.Included {
		fmt.Printf("  %s\n", e.Path)
	}
	fmt.Printf("left out (%d):\n", len(p.Left))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, e := range p.Left {
		fmt.Fprintf(tw, "  %s\t%s\n", e.Path, e.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Println("nothing was sent (--dry-run)")
	return nil
}

// lockfileGate runs the agents' lockfile gate on the project before it is
// uploaded, with the registries the online runners report.
func lockfileGate(ctx context.Context, cl *api.Client, plan *sourcepack.Plan) error {
	for _, e := range plan.Left {
		if slices.Contains([]string{"package.json", supplychain.PackageLockFile, supplychain.ShrinkwrapFile}, e.Path) {
			return withExit(exitRefused, fmt.Errorf("%s is left out (%s), but the build needs it: remove the rule", e.Path, e.Reason))
		}
	}
	pol, err := cl.Policy(ctx)
	if errors.Is(err, api.ErrNotFound) {
		pol, err = api.Policy{}, nil // an older coordinator
	}
	if err != nil {
		return fmt.Errorf("reading the runners' policy: %w", err)
	}
	if len(pol.Registries) == 0 {
		fmt.Fprintln(os.Stderr, "cleanroom: note: no runner online has reported its registries; the lockfile gate runs on the agent only")
		return nil
	}
	lf, err := supplychain.CheckLockfile(plan.Dir, supplychain.LockPolicy{Registries: pol.Registries})
	if err != nil {
		return withExit(exitRefused, fmt.Errorf("lockfile gate (nothing uploaded): %w", err))
	}
	fmt.Fprintf(os.Stderr, "cleanroom: lockfile %s: %d packages, every one from the runners' registries with sha512 integrity\n", lf.File, len(lf.Packages))
	return nil
}

func submitDir(ctx context.Context, cl *api.Client, plan *sourcepack.Plan, spec api.JobSpec) (_ api.Job, retErr error) {
	tmp, err := os.CreateTemp("", "cleanroom-src-*.tar.gz")
	if err != nil {
		return api.Job{}, fmt.Errorf("creating temporary archive: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	h := sha256.New()
	if err := plan.Write(io.MultiWriter(tmp, h)); err != nil {
		return api.Job{}, err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return api.Job{}, fmt.Errorf("sizing archive: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return api.Job{}, fmt.Errorf("rewinding archive: %w", err)
	}
	fmt.Fprintf(os.Stderr, "cleanroom: uploading %d files, %s (%s compressed); %d path(s) left out (--dry-run lists them)\n",
		plan.Files, api.ByteSize(plan.Bytes), api.ByteSize(size), len(plan.Left))
	var r io.Reader = tmp
	if isTerminal(os.Stderr) {
		bar := progressbar.NewOptions64(size, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("uploading"), progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(65*time.Millisecond))
		defer bar.Finish()
		r = &progressReader{f: tmp, bar: bar}
	}
	return cl.SubmitUpload(ctx, spec, hex.EncodeToString(h.Sum(nil)), r)
}

// progressReader reads the archive and moves the progress bar; it seeks
// (the bar starts again), so the upload can be sent again to another
// coordinator.
type progressReader struct {
	f   *os.File
	bar *progressbar.ProgressBar
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.f.Read(b)
	_ = p.bar.Add(n)
	return n, err
}

func (p *progressReader) Seek(off int64, whence int) (int64, error) {
	n, err := p.f.Seek(off, whence)
	if err == nil {
		_ = p.bar.Set64(n)
	}
	return n, err
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
