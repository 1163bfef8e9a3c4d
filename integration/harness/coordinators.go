package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/coordinator"
)

// CoordinatorAddrs are where Start's coordinators listen, on the lab host
// namespace's own loopback: the first alone on SQLite, both on PostgreSQL.
var CoordinatorAddrs = []string{CoordinatorAddr, "127.0.0.1:7071"}

// CoordinatorOptions configure a set of coordinators on one store.
type CoordinatorOptions struct {
	// Name prefixes their folders and logs ("" for Start's own).
	Name string
	// Addrs are the listen addresses in the lab host namespace, one
	// coordinator each.
	Addrs []string
	// Postgres is the DSN of a PostgreSQL server whose role may CREATE
	// DATABASE: a fresh database is made on it for these coordinators and
	// dropped when their Env closes. Empty: SQLite in the first
	// coordinator's data dir (one coordinator only).
	Postgres string
	// LeaseTTL, if set, is passed as --lease-ttl.
	LeaseTTL time.Duration
	// AgentsLastFirst gives the agents the coordinators last first (the
	// CLI keeps first first): with two, a job submitted through one is
	// claimed, logged and reported through the other, so every scenario
	// crosses coordinators. Start's set does this; the HA sets do not, so
	// that killing their first coordinator hits the agent and the CLI.
	AgentsLastFirst bool
}

// Coordinators starts a set of coordinators sharing one store and returns
// an Env whose CLI, agents and relays use them (every URL, comma
// separated, so they fail over), in the same lab, registry and folder as
// e. Its processes and database belong to it: its Close stops and drops
// them, and e's Close closes it too, if the caller did not.
func (e *Env) Coordinators(ctx context.Context, o CoordinatorOptions) (_ *Env, retErr error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, errors.New("harness: starting coordinators: the environment is closed")
	}
	v := &Env{Lab: e.Lab, Registry: e.Registry, Dir: e.Dir, opts: e.opts, parent: e}
	e.views = append(e.views, v)
	e.mu.Unlock()
	defer func() {
		if retErr != nil {
			_ = v.Close()
		}
	}()
	if err := v.startCoordinators(ctx, o); err != nil {
		return nil, err
	}
	return v, nil
}

// startCoordinators runs o's coordinators inside the lab host namespace,
// all with one admin token, and waits until each answers. It sets e's
// URL, URLs, Admin, Store and CoordinatorProcs.
func (e *Env) startCoordinators(ctx context.Context, o CoordinatorOptions) error {
	if len(o.Addrs) == 0 {
		return errors.New("harness: no coordinator address")
	}
	storeArg := ""
	e.Store = "sqlite"
	if o.Postgres != "" {
		dsn, drop, err := newDatabase(ctx, o.Postgres, o.Name)
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.cleanups = append(e.cleanups, drop)
		e.mu.Unlock()
		storeArg, e.Store = dsn, "postgres"
	} else if len(o.Addrs) > 1 {
		return errors.New("harness: several coordinators need a shared store (Postgres)")
	}
	// The admin token is made here, so every coordinator takes the same
	// (a coordinator creates it only when its file is missing).
	tokFile := filepath.Join(e.Dir, o.Name+"admin.token")
	admin := coordinator.NewAdminToken()
	if err := os.WriteFile(tokFile, []byte(admin+"\n"), 0o600); err != nil {
		return err
	}
	e.Admin = admin
	e.URLs = nil
	for i, addr := range o.Addrs {
		srvDir := filepath.Join(e.Dir, fmt.Sprintf("%sserver-%d", o.Name, i+1))
		if err := os.MkdirAll(srvDir, 0o700); err != nil {
			return err
		}
		args := []string{"server", "--data-dir", srvDir, "--listen", addr, "--admin-token-file", tokFile}
		if storeArg != "" {
			args = append(args, "--store", storeArg)
		}
		if o.LeaseTTL > 0 {
			args = append(args, "--lease-ttl", o.LeaseTTL.String())
		}
		p, err := e.start(ctx, fmt.Sprintf("%scoordinator-%d", o.Name, i+1), nil, args...)
		if err != nil {
			return err
		}
		e.CoordinatorProcs = append(e.CoordinatorProcs, p)
		e.URLs = append(e.URLs, "http://"+addr)
	}
	e.URL = e.URLs[0]
	e.AgentURLs = slices.Clone(e.URLs)
	if o.AgentsLastFirst {
		slices.Reverse(e.AgentURLs)
	}
	for i := range e.CoordinatorProcs {
		if err := e.waitCoordinator(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// waitCoordinator returns once coordinator i answers an authenticated
// request on its own URL.
func (e *Env) waitCoordinator(ctx context.Context, i int) error {
	p := e.CoordinatorProcs[i]
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, code := e.cliAt(ctx, e.URLs[i], "jobs"); code == 0 {
			return nil
		}
		if p.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("coordinator %s did not come up: %s", e.URLs[i], p.Output())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for coordinator %s: %w", e.URLs[i], ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// KillCoordinator SIGKILLs coordinator i (by the PID the harness started)
// and waits for it to exit, as a machine dying would.
func (e *Env) KillCoordinator(i int) error {
	p := e.CoordinatorProcs[i]
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("coordinator %s did not exit on SIGKILL", e.URLs[i])
	}
}

// newDatabase creates a fresh database on the PostgreSQL server at
// server (over whatever that DSN names, from the root namespace) and
// returns the DSN the coordinators use for it, and a function that drops
// it. That DSN names the server's unix socket: the coordinators run in
// the lab host namespace, whose loopback is not the root namespace's, so
// the server's TCP port on 127.0.0.1 is out of their reach, while a
// socket is a file and reaches across network namespaces.
func newDatabase(ctx context.Context, server, name string) (dsn string, drop func() error, err error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, errors.New("harness: Postgres must be a postgres:// URL")
	}
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dirs, port string
	if err := conn.QueryRow(ctx, `SELECT current_setting('unix_socket_directories'), current_setting('port')`).Scan(&dirs, &port); err != nil {
		return "", nil, fmt.Errorf("asking PostgreSQL for its socket: %w", err)
	}
	sock := strings.TrimSpace(strings.Split(dirs, ",")[0])
	if !strings.HasPrefix(sock, "/") {
		return "", nil, fmt.Errorf("PostgreSQL has no unix socket directory (%q): the coordinators in the lab's network namespace cannot reach it", dirs)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	db := "cleanroom_e2e_" + strings.ReplaceAll(name, "-", "_") + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+db); err != nil {
		return "", nil, fmt.Errorf("creating database %s: %w", db, err)
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, server)
		if err != nil {
			return fmt.Errorf("connecting to drop database %s: %w", db, err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`); err != nil {
			return fmt.Errorf("dropping database %s: %w", db, err)
		}
		return nil
	}
	q := url.Values{}
	q.Set("host", sock)
	q.Set("port", port)
	q.Set("sslmode", "disable")
	su := url.URL{Scheme: "postgres", User: u.User, Host: "", Path: "/" + db, RawQuery: q.Encode()}
	return su.String(), drop, nil
}
