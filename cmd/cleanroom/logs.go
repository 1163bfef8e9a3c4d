package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	var follow bool
	var fo followOpts
	cmd := &cobra.Command{
		Use:   "logs [-f] [--raw] JOB",
		Short: "Print a job's log; with -f, follow it until the job ends",
		Long: `Print a job's log; with -f, follow it until the job ends.

cleanroom's own lines (the agent's and the coordinator's) are stored as
records of their own, apart from the build's output, and printed as
"[cleanroom] …" (bold and coloured on a terminal). The build cannot print
one: in the build's output every control character but newline and tab
(escape sequences, carriage return, backspace, C1 controls, bidi overrides
and other invisible format characters) is shown as a visible escape (ESC as
␛, others as <U+202E>, bytes that are not UTF-8 as <0xFF>), and a build line
that starts with "[" or a character that is not ASCII is printed after a
gutter "│ ", so no line of the build starts like one of cleanroom's.

--raw prints the stored bytes unchanged instead: the build's output as it was
printed (escape sequences included), and each of cleanroom's lines after the
byte 0x1E (docs/api.md, "Job log format"). Do not send it to a terminal you trust.

With -f, a queued job's reason for waiting is printed on stderr, an
unreachable coordinator is retried for --retry-for, and the command exits
as "cleanroom submit --wait" does.

` + exitCodeHelp,
		Args: cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		if follow {
			return followAndExit(cmd.Context(), cl, args[0], fo)
		}
		w, done := logWriter(fo.raw, os.Stdout)
		_, err = cl.ReadLog(cmd.Context(), args[0], 0, false, w)
		if derr := done(); err == nil && derr != nil {
			err = derr
		}
		if err != nil {
			return fmt.Errorf("reading log of %s: %w", args[0], err)
		}
		return nil
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new output until the job ends, then exit with its exit code")
	fo.addFlags(cmd)
	cmd.Flags().BoolVar(&fo.raw, "raw", false, "print the stored bytes unchanged (control characters and record markers included)")
	rootCmd.AddCommand(cmd)
}

// logWriter returns where a job log printed on out goes: with raw the
// stored bytes as they are, else an api.LogRenderer, styled on a terminal
// unless NO_COLOR is set or TERM is dumb. done ends the output (a line the
// log left open is ended, so what is printed next starts a line of its own);
// it may be called more than once.
func logWriter(raw bool, out *os.File) (w io.Writer, done func() error) {
	if raw {
		return out, func() error { return nil }
	}
	styled := isTerminal(out) && os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"
	lr := api.NewLogRenderer(out, styled)
	return lr, lr.Flush
}
