package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/sandbox/nodeimage"
	"github.com/spf13/cobra"
)

func init() {
	var cf containerdFlags
	var (
		image, workspace, memory, disk, tmp string
		cpus                                float64
		pids                                int64
		timeout                             api.Duration
		grace                               = api.Duration(5 * time.Second)
		env                                 []string
		dir                                 string
	)
	sandboxCmd := &cobra.Command{Use: "sandbox", Short: "Run commands in a job sandbox by hand"}
	run := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Run one command in a fresh sandbox with a job's hardening",
		Long: `Runs one command in a fresh, hardened sandbox — the same as a job's: non-root
user, no capabilities, no_new_privileges, default seccomp profile, read-only
root filesystem, tmpfs /tmp, masked /proc paths, new pid/ipc/uts/mount
namespaces, memory/CPU/pids limits — and a new, empty network namespace (no
network at all). The environment is only what --env gives (plus PATH and HOME).

The workspace directory is copied in (the sandbox never writes to it) and
appears at /workspace. The sandbox is destroyed afterwards, whatever happens;
the exit code is the command's.`,
		Example: `  cleanroom sandbox run -- node --version
  cleanroom sandbox run --workspace ./examples/hello --memory 1g -- npm run build`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lim := sandbox.Limits{CPUs: cpus, Pids: pids}
			var err error
			if cmd.Flags().Changed("cpus") && cpus <= 0 {
				return fmt.Errorf("--cpus %v: must be greater than zero", cpus)
			}
			if cmd.Flags().Changed("pids") && pids <= 0 {
				return fmt.Errorf("--pids %d: must be greater than zero", pids)
			}
			if lim.MemoryBytes, err = parseSizeFlag("memory", memory); err != nil {
				return err
			}
			if lim.DiskBytes, err = parseSizeFlag("disk", disk); err != nil {
				return err
			}
			if lim.TmpBytes, err = parseSizeFlag("tmp", tmp); err != nil {
				return err
			}
			fullEnv := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + sandbox.HomeDir}
			for _, e := range env {
				if !strings.Contains(e, "=") {
					return fmt.Errorf("--env %q: want KEY=VALUE", e)
				}
				fullEnv = append(fullEnv, e)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			c, err := cf.client(ctx, "sandbox-run", cliLogger())
			if err != nil {
				return err
			}
			defer c.Close()
			id := make([]byte, 4)
			_, _ = rand.Read(id)
			sb, err := c.Create(ctx, sandbox.Options{
				JobID:     "run-" + hex.EncodeToString(id),
				Image:     image,
				Workspace: workspace,
				Env:       fullEnv,
				Limits:    lim,
			})
			if err != nil {
				return err
			}
			defer func() {
				if err := sb.Destroy(context.WithoutCancel(ctx)); err != nil {
					fmt.Fprintln(os.Stderr, "cleanroom: destroying sandbox:", err)
				}
			}()
			res, err := sb.Run(ctx, sandbox.Step{Args: args, Dir: dir, Timeout: timeout.D(), Grace: grace.D(), Stdout: os.Stdout, Stderr: os.Stderr})
			if err != nil {
				if errors.Is(err, sandbox.ErrStepNotFound) {
					return &exitError{code: 127, msg: err.Error()}
				}
				return err
			}
			if res.Reason != sandbox.ReasonNone {
				code := res.ExitCode
				if code == 0 {
					code = 1
				}
				return &exitError{code: code, msg: fmt.Sprintf("command ended: %s (exit %d)", res.Reason, res.ExitCode)}
			}
			if res.ExitCode != 0 {
				return &exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	cf.register(run.Flags())
	f := run.Flags()
	f.StringVar(&image, "image", nodeimage.DefaultRef, "image reference in containerd (see `cleanroom image build`)")
	f.StringVar(&workspace, "workspace", "", "directory copied into /workspace (default: empty workspace)")
	f.StringVar(&dir, "dir", "", "working directory inside the sandbox (default /workspace)")
	f.StringVar(&memory, "memory", "2g", "memory limit (swap disabled), e.g. 512m, 2g")
	f.Float64Var(&cpus, "cpus", 2, "CPU limit in CPUs")
	f.Int64Var(&pids, "pids", 1024, "maximum number of processes")
	f.StringVar(&disk, "disk", "", "size of the workspace filesystem, e.g. 1g (default: no separate filesystem)")
	f.StringVar(&tmp, "tmp", "512m", "size of the /tmp tmpfs (counts toward memory)")
	f.Var(durationFlag{&timeout}, "timeout", "wall-clock limit for the command (0 = none)")
	f.Var(durationFlag{&grace}, "grace", "time between SIGTERM and SIGKILL on timeout or Ctrl-C")
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE for the command's environment (repeatable)")
	sandboxCmd.AddCommand(run)
	rootCmd.AddCommand(sandboxCmd)
}

func parseSizeFlag(name, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := api.ParseByteSize(v)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", name, err)
	}
	if n <= 0 {
		return 0, fmt.Errorf("--%s: size %q must be greater than zero", name, v)
	}
	return int64(n), nil
}
