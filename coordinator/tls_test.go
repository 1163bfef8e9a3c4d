package coordinator_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cleanroom test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestServerSpeaksTLSAndOnlyTLS(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	admin := coordinator.NewAdminToken()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := coordinator.New(ctx, coordinator.Config{DataDir: dir, AdminToken: admin})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, certFile, keyFile) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	base := "https://" + ln.Addr().String()

	trusted := api.NewClient(base, admin)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	trusted.HTTP = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if _, err := trusted.ListJobs(ctx, api.JobFilter{}); err != nil {
		t.Fatalf("TLS client trusting the certificate: %v", err)
	}

	untrusted := api.NewClient(base, admin)
	utr := &http.Transport{}
	defer utr.CloseIdleConnections()
	untrusted.HTTP = &http.Client{Transport: utr, Timeout: 10 * time.Second}
	if _, err := untrusted.ListJobs(ctx, api.JobFilter{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client without the CA: err = %v, want a certificate error", err)
	}

	plain := api.NewClient("http://"+ln.Addr().String(), admin)
	ptr := &http.Transport{}
	defer ptr.CloseIdleConnections()
	plain.HTTP = &http.Client{Transport: ptr, Timeout: 10 * time.Second}
	if _, err := plain.ListJobs(ctx, api.JobFilter{}); err == nil {
		t.Error("plain HTTP to the TLS listener succeeded")
	}
}
