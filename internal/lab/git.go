package lab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// The lab's git server: HTTPS on the registry host, known to agents by a
// static name (it is in no DNS).
const (
	GitName = "git.cleanroom.test"
	GitPort = 8443
)

// GitServer is an HTTPS git server (`git http-backend` behind net/http/cgi)
// listening inside a lab namespace. Its certificate is signed by a CA of
// its own, written to CAFile for the agents' git.ca_file.
type GitServer struct {
	Addr   string // ip:port it listens on
	CAFile string // PEM of the CA that signed its certificate
	Root   string // bare repositories, NAME.git
	// requests counts the HTTP requests it has answered.
	requests atomic.Int64
}

// Requests is how many HTTP requests the server has answered so far.
func (g *GitServer) Requests() int64 { return g.requests.Load() }

// ServeGit starts a git server in the lab namespace ns on addr (an
// ip:port of that namespace), serving the bare repositories under
// dir/repos with a certificate for names and addr's IP; the CA goes to
// dir/ca.pem. It stops when the lab closes.
func (l *Lab) ServeGit(ns, addr, dir string, names ...string) (*GitServer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("starting the git server: %w", err)
	}
	g := &GitServer{Addr: addr, CAFile: filepath.Join(dir, "ca.pem"), Root: filepath.Join(dir, "repos")}
	if err := os.MkdirAll(g.Root, 0o755); err != nil {
		return nil, fmt.Errorf("starting the git server: %w", err)
	}
	cert, caPEM, err := selfSignedTLS(names, net.ParseIP(host))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(g.CAFile, caPEM, 0o644); err != nil {
		return nil, fmt.Errorf("writing the git server's CA: %w", err)
	}
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return nil, fmt.Errorf("finding git http-backend: %w", err)
	}
	backend := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + g.Root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"},
	}
	var ln net.Listener
	if err := Do(NSPath(ns), func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", addr, ns, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			g.requests.Add(1)
			backend.ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	l.mu.Lock()
	l.closers = append([]func() error{func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(ctx)
	}}, l.closers...)
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "lab git server: %v\n", err)
		}
	}()
	return g, nil
}

// AddRepo commits every file of src (as it is; nothing is left out) into a
// new bare repository NAME.git and returns the commit id.
func (g *GitServer) AddRepo(ctx context.Context, name, src string) (string, error) {
	bare := filepath.Join(g.Root, name+".git")
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-c", "user.name=lab", "-c", "user.email=lab@cleanroom.test",
			"-c", "init.defaultBranch=main"}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=/nonexistent"}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
		}
		return strings.TrimSpace(out.String()), nil
	}
	in := []string{"--git-dir=" + bare, "--work-tree=" + src}
	for _, args := range [][]string{{"init", "--quiet", "--bare", bare}, append(in, "add", "--all"), append(in, "commit", "--quiet", "-m", "lab: "+name)} {
		if _, err := git(args...); err != nil {
			return "", fmt.Errorf("making git repository %s: %w", name, err)
		}
	}
	return git("--git-dir="+bare, "rev-parse", "HEAD")
}

// selfSignedTLS makes a CA and a server certificate it signs for names and
// ip, valid for a day.
func selfSignedTLS(names []string, ip net.IP) (tls.Certificate, []byte, error) {
	fail := func(err error) (tls.Certificate, []byte, error) {
		return tls.Certificate{}, nil, fmt.Errorf("making the git server's certificate: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cleanroom lab CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: names, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip != nil {
		leaf.IPAddresses = []net.IP{ip}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, caPEM, nil
}
