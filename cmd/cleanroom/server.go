package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

// serverConfig is the optional YAML file of `cleanroom server --config`;
// flags given on the command line win over it.
type serverConfig struct {
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// Store is "sqlite" (default) or a postgres:// URL (see --store).
	Store          string       `yaml:"store"`
	AdminTokenFile string       `yaml:"admin_token_file"`
	TLSCert        string       `yaml:"tls_cert"`
	TLSKey         string       `yaml:"tls_key"`
	InsecureHTTP   bool         `yaml:"insecure_http"`
	LeaseTTL       api.Duration `yaml:"lease_ttl"`
	MaxAttempts    int          `yaml:"max_attempts"`
	MaxUpload      api.ByteSize `yaml:"max_upload"`
	MaxArtifact    api.ByteSize `yaml:"max_artifact"`
	MaxLog         api.ByteSize `yaml:"max_log"`
	Retention      api.Duration `yaml:"retention"`
	LogFormat      string       `yaml:"log_format"`
	// NoMetrics turns /metrics off; MetricsTokenFile holds a bearer token
	// /metrics then requires (default: open, as /metrics usually is).
	NoMetrics        bool   `yaml:"no_metrics"`
	MetricsTokenFile string `yaml:"metrics_token_file"`
}

func newLogger(name, format string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, JSONFormat: format == "json", Output: os.Stderr, Level: hclog.Info})
}

func init() {
	var configPath string
	var storeCheck bool
	c := serverConfig{Listen: "127.0.0.1:7070", DataDir: "/var/lib/cleanroom", LeaseTTL: api.Duration(30 * time.Second),
		MaxAttempts: 3, MaxUpload: 100 << 20, MaxArtifact: 1 << 30, MaxLog: 16 << 20, LogFormat: "text"}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the coordinator (job queue, runner registry, logs, egress audit, artifacts)",
		Long: `Run the coordinator: the HTTP JSON API under /v1 that agents claim jobs from and
that the CLI talks to (see docs/api.md). State lives in SQLite under --data-dir,
or with --store postgres://… in PostgreSQL, which several coordinators can share
(docs/operations.md). "cleanroom server migrate" shows and applies schema
migrations; a server applies them itself when it starts.

On first start an admin token is generated into DATA_DIR/admin.token (mode 0600)
and printed once; use it with "cleanroom token create" to make registration and
submit tokens. Plain HTTP is refused on a non-loopback address unless
--insecure-http is given (for a TLS-terminating proxy in front).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath != "" {
				fc, err := readServerConfig(configPath)
				if err != nil {
					return err
				}
				mergeServerConfig(cmd, &c, fc)
			}
			if storeCheck {
				return migrateStore(cmd.Context(), cmd.OutOrStdout(), c.Store, c.DataDir, true)
			}
			return runServer(cmd.Context(), c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "YAML config file with the same keys as the flags (listen, data_dir, tls_cert, …)")
	f.StringVar(&c.Listen, "listen", c.Listen, "address to listen on (host:port)")
	f.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the server lock, the admin token and (with the SQLite store) the database, uploaded sources and artifacts")
	f.StringVar(&c.Store, "store", "", storeFlagHelp)
	f.BoolVar(&storeCheck, "store-check", false, "print the store's schema version, this build's and the pending migrations, and exit (as server migrate --dry-run)")
	f.StringVar(&c.AdminTokenFile, "admin-token-file", "", "file holding the admin token (default DATA_DIR/admin.token, created if missing)")
	f.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate (PEM); with --tls-key serves HTTPS")
	f.StringVar(&c.TLSKey, "tls-key", "", "TLS private key (PEM)")
	f.BoolVar(&c.InsecureHTTP, "insecure-http", false, "allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy)")
	f.Var(durationFlag{&c.LeaseTTL}, "lease-ttl", "how long a claim or heartbeat keeps a job before it is re-queued")
	f.IntVar(&c.MaxAttempts, "max-attempts", c.MaxAttempts, "leases a job gets before it is marked lost (default for jobs that set none)")
	f.Var(sizeFlag{&c.MaxUpload}, "max-upload", "largest accepted source tarball")
	f.Var(sizeFlag{&c.MaxArtifact}, "max-artifact", "largest accepted artifact")
	f.Var(sizeFlag{&c.MaxLog}, "max-log", "log bytes kept per job; past it a truncation marker is stored")
	f.Var(durationFlag{&c.Retention}, "retention", "delete jobs that ended longer ago than this (e.g. 90d), with their logs, egress events and artifacts; 0 keeps everything")
	f.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text (for people) or json (for machines)")
	f.BoolVar(&c.NoMetrics, "no-metrics", false, "do not serve Prometheus metrics at /metrics")
	f.StringVar(&c.MetricsTokenFile, "metrics-token-file", "", "file holding a bearer token that /metrics then requires (default: /metrics is open)")
	cmd.AddCommand(newServerMigrateCmd())
	cmd.AddCommand(newMigrateStoreCmd())
	rootCmd.AddCommand(cmd)
}

// readServerConfig reads the YAML file of --config (unknown keys are an
// error).
func readServerConfig(path string) (serverConfig, error) {
	var fc serverConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return fc, fmt.Errorf("reading server config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil {
		return fc, fmt.Errorf("parsing server config %s: %w", path, err)
	}
	return fc, nil
}

// mergeServerConfig copies file values for the flags not set explicitly.
func mergeServerConfig(cmd *cobra.Command, c *serverConfig, fc serverConfig) {
	set := func(flag string) bool { return cmd.Flags().Changed(flag) }
	if !set("listen") && fc.Listen != "" {
		c.Listen = fc.Listen
	}
	if !set("data-dir") && fc.DataDir != "" {
		c.DataDir = fc.DataDir
	}
	if !set("store") && fc.Store != "" {
		c.Store = fc.Store
	}
	if !set("admin-token-file") && fc.AdminTokenFile != "" {
		c.AdminTokenFile = fc.AdminTokenFile
	}
	if !set("tls-cert") && fc.TLSCert != "" {
		c.TLSCert = fc.TLSCert
	}
	if !set("tls-key") && fc.TLSKey != "" {
		c.TLSKey = fc.TLSKey
	}
	if !set("insecure-http") && fc.InsecureHTTP {
		c.InsecureHTTP = true
	}
	if !set("lease-ttl") && fc.LeaseTTL > 0 {
		c.LeaseTTL = fc.LeaseTTL
	}
	if !set("max-attempts") && fc.MaxAttempts > 0 {
		c.MaxAttempts = fc.MaxAttempts
	}
	if !set("max-upload") && fc.MaxUpload > 0 {
		c.MaxUpload = fc.MaxUpload
	}
	if !set("max-artifact") && fc.MaxArtifact > 0 {
		c.MaxArtifact = fc.MaxArtifact
	}
	if !set("max-log") && fc.MaxLog > 0 {
		c.MaxLog = fc.MaxLog
	}
	if !set("retention") && fc.Retention > 0 {
		c.Retention = fc.Retention
	}
	if !set("log-format") && fc.LogFormat != "" {
		c.LogFormat = fc.LogFormat
	}
	if !set("no-metrics") && fc.NoMetrics {
		c.NoMetrics = true
	}
	if !set("metrics-token-file") && fc.MetricsTokenFile != "" {
		c.MetricsTokenFile = fc.MetricsTokenFile
	}
}

func runServer(ctx context.Context, c serverConfig) (retErr error) {
	log := newLogger("coordinator", c.LogFormat)
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("starting server: --tls-cert and --tls-key go together")
	}
	if err := coordinator.CheckListen(c.Listen, c.TLSCert != "", c.InsecureHTTP); err != nil {
		return err
	}
	if _, err := storeKind(c.Store); err != nil {
		return err
	}
	if c.TLSCert != "" { // fail before anything is created, not in Serve
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return fmt.Errorf("loading TLS certificate: %w", err)
		}
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	unlock, err := lockDataDir(c.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	tokFile := c.AdminTokenFile
	if tokFile == "" {
		tokFile = filepath.Join(c.DataDir, "admin.token")
	}
	tok, created, err := coordinator.EnsureAdminToken(tokFile)
	if err != nil {
		return err
	}
	tokenShown := false
	if created {
		// Printed once the listener is up; a start that fails before
		// takes the unused token away, so the next start prints a new one.
		defer func() {
			if retErr != nil && !tokenShown {
				os.Remove(tokFile)
			}
		}()
	}
	var metricsToken string
	if c.MetricsTokenFile != "" {
		if metricsToken, err = readMetricsToken(c.MetricsTokenFile); err != nil {
			return err
		}
	}
	st, err := openServerStore(ctx, c)
	if err != nil {
		return err
	}
	if st != nil {
		defer st.Close() // after the server stopped using it
	}
	srv, err := coordinator.New(ctx, coordinator.Config{DataDir: c.DataDir, Store: st, AdminToken: tok, LeaseTTL: c.LeaseTTL.D(),
		MaxAttempts: c.MaxAttempts, MaxUpload: int64(c.MaxUpload), MaxArtifact: int64(c.MaxArtifact), MaxLog: int64(c.MaxLog),
		Retention: c.Retention.D(), DisableMetrics: c.NoMetrics, MetricsToken: metricsToken, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listening on %s: %w", c.Listen, err)
	}
	scheme := "http"
	if c.TLSCert != "" {
		scheme = "https"
	}
	retention := "off: jobs, logs, egress events and artifacts are kept forever (see --retention)"
	if c.Retention > 0 {
		retention = c.Retention.String() + " after a job ends"
	}
	log.Info("coordinator listening", "url", scheme+"://"+ln.Addr().String(), "data_dir", c.DataDir,
		"store", describeStore(c.Store, c.DataDir), "retention", retention)
	if created {
		fmt.Fprintf(os.Stderr, "Admin token (shown once; also saved in %s, mode 0600):\n\n    %s\n\n", tokFile, tok)
		tokenShown = true
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case sig := <-sigs:
			log.Info("coordinator shutting down", "signal", sig.String())
			cancel()
		case <-sctx.Done():
		}
	}()
	err = srv.Serve(sctx, ln, c.TLSCert, c.TLSKey)
	if err != nil {
		log.Error("coordinator stopped", "error", err)
		return err
	}
	log.Info("coordinator stopped")
	return nil
}

// dataDirLock is the file whose flock marks a data directory in use.
const dataDirLock = "server.lock"

// lockDataDir takes the data directory for this process: a second server
// on the same directory (two writers of one SQLite database, blob store and
// admin token) fails at once instead. The lock is an flock, so the kernel
// releases it when the process ends, however it ends; the file keeps the
// holder's pid for the message.
func lockDataDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, dataDirLock)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening data directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(holder))
			if pid == "" {
				pid = "unknown"
			}
			return nil, &dataDirInUseError{dir: dir, pid: pid, path: path}
		}
		return nil, fmt.Errorf("locking data directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}

// dataDirInUseError: another process holds a data directory's lock.
type dataDirInUseError struct{ dir, pid, path string }

func (e *dataDirInUseError) Error() string {
	return fmt.Sprintf("data directory %s is in use by another cleanroom server (pid %s holds %s): stop it, or give this one its own --data-dir", e.dir, e.pid, e.path)
}

// readMetricsToken reads the bearer token /metrics requires from file: one
// line of at least 16 characters.
func readMetricsToken(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("reading metrics token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 || strings.ContainsAny(tok, " \t\n") {
		return "", fmt.Errorf("reading metrics token %s: want one line of at least 16 characters, no spaces", file)
	}
	return tok, nil
}

// durationFlag and sizeFlag let pflag parse api.Duration and api.ByteSize.
type durationFlag struct{ d *api.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}
func (f durationFlag) Set(s string) error {
	v, err := api.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d = v
	return nil
}
func (f durationFlag) Type() string { return "duration" }

type sizeFlag struct{ s *api.ByteSize }

func (f sizeFlag) String() string {
	if f.s == nil {
		return ""
	}
	return f.s.String()
}
func (f sizeFlag) Set(s string) error {
	v, err := api.ParseByteSize(s)
	if err != nil {
		return err
	}
	*f.s = v
	return nil
}
func (f sizeFlag) Type() string { return "size" }
