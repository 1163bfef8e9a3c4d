package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	var o loginOptions
	login := &cobra.Command{
		Use:   "login",
		Short: "Store the coordinator's URL and a token in the CLI config file",
		Long: `Check that the coordinator at --url accepts the token, then write both to the
CLI config file (default $XDG_CONFIG_HOME/cleanroom/config.yaml, else
~/.config/cleanroom/config.yaml; mode 0600 in a 0700 folder), as "gh auth login"
does. Every client command then finds them there; a flag or CLEANROOM_URL /
CLEANROOM_TOKEN still wins ("cleanroom config" shows what is used).

The token comes from --token, from --token-file (a file, or - for stdin, so it
never appears in the process list or shell history).`,
		Example: `  cleanroom login --url http://127.0.0.1:7070 --token-file /var/lib/cleanroom/admin.token --wait 30s
  pass show ci/cleanroom | cleanroom login --url https://ci.example:7070 --token-file -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLogin(cmd.Context(), o, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	f := login.Flags()
	f.StringVar(&o.url, "url", "", "coordinator URL (http://… on loopback, else https://…), or several separated by commas")
	f.StringVar(&o.token, "token", "", "admin, submit or audit token")
	f.StringVar(&o.tokenFile, "token-file", "", "read the token from this file (- reads stdin)")
	f.StringVar(&o.caFile, "ca-file", "", "PEM CA bundle to trust for the coordinator's TLS certificate (stored as an absolute path)")
	f.StringVar(&o.config, "cli-config", defaultCLIConfig(), "CLI config file to write")
	f.DurationVar(&o.wait, "wait", 0, "wait this long for a coordinator that is still starting (its token file missing, or nothing listening yet)")
	_ = login.MarkFlagRequired("url")

	cf := &cobra.Command{
		Use:   "config",
		Short: "Show which coordinator and token the client commands use, and from where",
		Long: `Print the coordinator URL, the token (only its first characters) and the CA
bundle that client commands would use with the same flags and environment,
and where each comes from: a flag, then the environment (CLEANROOM_URL,
CLEANROOM_TOKEN), then the CLI config file written by "cleanroom login".`,
		Args: cobra.NoArgs,
	}
	flags := addClientFlags(cf, false)
	show := func(*cobra.Command, []string) error { return showConfig(os.Stdout, flags) }
	cf.RunE = show
	showCmd := &cobra.Command{Use: "show", Short: cf.Short, Args: cobra.NoArgs, RunE: show}
	// show shares the parent's flags: `cleanroom config show --url X`.
	showCmd.Flags().AddFlagSet(cf.Flags())
	cf.AddCommand(showCmd)
	rootCmd.AddCommand(login, cf)
}

type loginOptions struct {
	url, token, tokenFile, caFile, config string
	wait                                  time.Duration
}

// runLogin reads the token, checks it against the coordinator and writes
// the CLI config.
func runLogin(ctx context.Context, o loginOptions, stdin io.Reader, out io.Writer) error {
	if o.config == "" {
		return errors.New("no CLI config path: set XDG_CONFIG_HOME or HOME, or use --cli-config")
	}
	urls := api.SplitURLs(o.url)
	if len(urls) == 0 {
		return fmt.Errorf("--url %q: must be an http:// or https:// URL, e.g. http://127.0.0.1:7070", o.url)
	}
	for _, s := range urls {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--url %q: must be an http:// or https:// URL, e.g. http://127.0.0.1:7070 (several coordinators: separated by commas)", s)
		}
	}
	if (o.token == "") == (o.tokenFile == "") {
		return errors.New("give the token with --token or --token-file (- for stdin)")
	}
	if o.caFile != "" {
		abs, err := filepath.Abs(o.caFile)
		if err != nil {
			return err
		}
		o.caFile = abs
	}
	deadline := time.Now().Add(o.wait)
	token, err := readLoginToken(o, stdin, deadline)
	if err != nil {
		return err
	}
	conn := connection{URL: setting{Value: o.url}, Token: setting{Value: token}, CAFile: setting{Value: o.caFile}}
	cl, err := conn.client()
	if err != nil {
		return err
	}
	for {
		_, err = cl.ListJobs(ctx, api.JobFilter{Limit: 1})
		var ae *api.Error
		if err == nil || errors.As(err, &ae) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("checking the token with %s: %w", o.url, err)
	}
	if err := writeCLIConfig(o.config, cliConfig{URL: o.url, Token: token, CAFile: o.caFile}); err != nil {
		return err
	}
	fmt.Fprintf(out, "logged in to %s; URL and token written to %s\n", o.url, o.config)
	return nil
}

// readLoginToken reads --token or --token-file (waiting until the deadline
// for a file a starting server has not written yet).
func readLoginToken(o loginOptions, stdin io.Reader, deadline time.Time) (string, error) {
	if o.token != "" {
		return o.token, nil
	}
	var b []byte
	var err error
	for {
		if o.tokenFile == "-" {
			b, err = io.ReadAll(io.LimitReader(stdin, 64<<10))
		} else {
			b, err = os.ReadFile(o.tokenFile)
		}
		if err == nil && len(strings.TrimSpace(string(b))) > 0 || o.tokenFile == "-" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("reading token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \n\t") {
		return "", fmt.Errorf("reading token from %s: want one token on one line", o.tokenFile)
	}
	return tok, nil
}

// writeCLIConfig writes c to path (mode 0600) atomically, making its folder
// 0700.
func writeCLIConfig(path string, c cliConfig) (retErr error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restricting %s: %w", dir, err)
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encoding CLI config: %w", err)
	}
	b = append([]byte("# cleanroom CLI config, written by `cleanroom login`. It holds a token: keep it 0600.\n"), b...)
	f, err := os.CreateTemp(dir, ".config-*")
	if err != nil {
		return fmt.Errorf("writing CLI config: %w", err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("writing CLI config: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("writing CLI config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing CLI config: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing CLI config: %w", err)
	}
	return nil
}

// showConfig prints the resolved connection and each value's source; the
// token only as its first characters.
func showConfig(w io.Writer, f *clientFlags) error {
	state := "not found"
	if fi, err := os.Stat(f.config); err == nil {
		state = fmt.Sprintf("mode %04o", fi.Mode().Perm())
	}
	fmt.Fprintf(w, "config file: %s (%s)\n", f.config, state)
	c, err := f.resolve()
	if err != nil {
		return err
	}
	line := func(name string, s setting, shown string) {
		if s.Value == "" {
			fmt.Fprintf(w, "%-8s (not set)\n", name+":")
			return
		}
		fmt.Fprintf(w, "%-8s %s  (from %s)\n", name+":", shown, s.Source)
	}
	line("url", c.URL, c.URL.Value)
	line("token", c.Token, maskToken(c.Token.Value))
	line("ca_file", c.CAFile, c.CAFile.Value)
	return nil
}

// maskToken keeps a token's kind prefix and a few characters to tell tokens
// apart: enough to recognise, not to use.
func maskToken(t string) string {
	n := 4
	if i := strings.IndexByte(t, '_'); i >= 0 && i < 8 {
		n += i + 1
	}
	if len(t) <= n+8 {
		return "…" // too short to show any of it safely
	}
	return t[:n] + "…"
}
