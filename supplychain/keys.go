package supplychain

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// ErrBadKey means a PEM block is not an ed25519 key of the expected kind.
var ErrBadKey = errors.New("not an ed25519 key")

// GenerateKey creates a runner's provenance signing key pair. It cannot fail:
// crypto/rand never returns an error on supported platforms since Go 1.24.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(fmt.Sprintf("generating ed25519 key: %v", err))
	}
	return pub, priv
}

// EncodePrivateKeyPEM encodes a signing key as a PKCS#8 "PRIVATE KEY" PEM
// block, the form openssl and most tooling read.
func EncodePrivateKeyPEM(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("marshalling private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodePublicKeyPEM encodes a verification key as a PKIX "PUBLIC KEY" PEM
// block, the file users pass to cleanroom verify --key.
func EncodePublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshalling public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes a PKCS#8 ed25519 private key.
func ParsePrivateKeyPEM(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("decoding private key: %w: no PRIVATE KEY PEM block", ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w: %v", ErrBadKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parsing private key: %w: got %T", ErrBadKey, k)
	}
	return priv, nil
}

// ParsePublicKeyPEM decodes a PKIX ed25519 public key.
func ParsePublicKeyPEM(data []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("decoding public key: %w: no PUBLIC KEY PEM block", ErrBadKey)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing public key: %w: %v", ErrBadKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("parsing public key: %w: got %T", ErrBadKey, k)
	}
	return pub, nil
}

// KeyID is a stable identifier for a public key (hex sha256 of its PKIX
// encoding), suitable as the DSSE keyid so verifiers can tell which
// runner key signed an envelope.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
