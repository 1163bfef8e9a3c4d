package supplychain

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	testBuilder = "https://cleanroom.local/runners/r-7f3a"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
	testGitURL  = "https://git.example/team/app.git"
)

func testInput(artifacts ...Artifact) ProvenanceInput {
	return ProvenanceInput{
		Artifacts:       artifacts,
		Source:          Source{GitURL: testGitURL, Commit: testCommit},
		JobSpec:         map[string]any{"build": []string{"npm", "run", "build"}, "artifacts": []string{"dist/app.tgz"}},
		NodeImage:       "cleanroom.local/node:22",
		NodeImageDigest: "sha256:" + strings.Repeat("ab", 32),
		LockfileSHA256:  strings.Repeat("cd", 32),
		BuilderID:       testBuilder,
		JobID:           "j-0192",
		StartedOn:       time.Date(2026, 11, 26, 18, 40, 0, 0, time.UTC),
		FinishedOn:      time.Date(2026, 11, 26, 18, 41, 0, 0, time.UTC),
	}
}

func signedFixture(t *testing.T) (artifact []byte, env []byte, pub ed25519.PublicKey, priv ed25519.PrivateKey) {
	t.Helper()
	pub, priv = GenerateKey()
	artifact = []byte("the built tarball\x00\x01")
	stmt, err := Provenance(testInput(HashBytes("dist/app.tgz", artifact), HashBytes("dist/other.js", []byte("x"))))
	if err != nil {
		t.Fatal(err)
	}
	env, err = SignProvenance(stmt, priv, KeyID(pub))
	if err != nil {
		t.Fatal(err)
	}
	return artifact, env, pub, priv
}

func TestSignProvenanceWritesOneJSONLineWithTheStatement(t *testing.T) {
	_, line, pub, _ := signedFixture(t)
	if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
		t.Fatalf("envelope is not one JSON line: %q", line)
	}
	var env dsse.Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		t.Fatal(err)
	}
	if env.PayloadType != PayloadTypeInToto || len(env.Signatures) != 1 || env.Signatures[0].KeyID != KeyID(pub) {
		t.Fatalf("envelope header: %+v", env)
	}
	payload, err := env.DecodeB64Payload()
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Type          string `json:"_type"`
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		Predicate struct {
			BuildDefinition struct {
				BuildType          string         `json:"buildType"`
				ExternalParameters map[string]any `json:"externalParameters"`
				ResolvedDeps       []struct {
					Name   string            `json:"name"`
					URI    string            `json:"uri"`
					Digest map[string]string `json:"digest"`
				} `json:"resolvedDependencies"`
			} `json:"buildDefinition"`
			RunDetails struct {
				Builder  struct{ ID string } `json:"builder"`
				Metadata struct {
					InvocationID string `json:"invocationId"`
					StartedOn    string `json:"startedOn"`
					FinishedOn   string `json:"finishedOn"`
				} `json:"metadata"`
			} `json:"runDetails"`
		} `json:"predicate"`
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		t.Fatalf("decoding statement: %v\n%s", err, payload)
	}
	bd, rd := st.Predicate.BuildDefinition, st.Predicate.RunDetails
	checks := []struct {
		what      string
		got, want any
	}{
		{"_type", st.Type, intoto.StatementTypeUri},
		{"predicateType", st.PredicateType, PredicateTypeSLSAProvenanceV1},
		{"subjects", len(st.Subject), 2},
		{"subject name", st.Subject[0].Name, "dist/app.tgz"},
		{"buildType", bd.BuildType, BuildType},
		{"source commit", bd.ExternalParameters["source"].(map[string]any)["commit"], testCommit},
		{"job spec", bd.ExternalParameters["job"].(map[string]any)["artifacts"].([]any)[0], "dist/app.tgz"},
		{"resolved deps", len(bd.ResolvedDeps), 3},
		{"source uri", bd.ResolvedDeps[0].URI, "git+" + testGitURL + "@" + testCommit},
		{"image digest", bd.ResolvedDeps[1].Digest["sha256"], strings.Repeat("ab", 32)},
		{"lockfile digest", bd.ResolvedDeps[2].Digest["sha256"], strings.Repeat("cd", 32)},
		{"lockfile name", bd.ResolvedDeps[2].Name, PackageLockFile},
		{"builder", rd.Builder.ID, testBuilder},
		{"invocationId", rd.Metadata.InvocationID, "j-0192"},
		{"startedOn", rd.Metadata.StartedOn, "2026-11-26T18:40:00Z"},
		{"finishedOn", rd.Metadata.FinishedOn, "2026-11-26T18:41:00Z"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

// mutateEnvelope decodes the envelope, applies f, and re-encodes it.
func mutateEnvelope(t *testing.T, line []byte, f func(env *dsse.Envelope)) []byte {
	t.Helper()
	var env dsse.Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		t.Fatal(err)
	}
	f(&env)
	out, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func flipB64(t *testing.T, s string, at int) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	b[at%len(b)] ^= 0x01
	return base64.StdEncoding.EncodeToString(b)
}

func TestVerifyProvenance(t *testing.T) {
	artifact, line, pub, priv := signedFixture(t)
	otherPub, _ := GenerateKey()
	good := HashBytes("app.tgz", artifact)
	changed := append([]byte(nil), artifact...)
	changed[3] ^= 0xff

	wrongType, err := Provenance(testInput(good))
	if err != nil {
		t.Fatal(err)
	}
	wrongType.Predicate.Fields["buildDefinition"].GetStructValue().Fields["buildType"] =
		structpb.NewStringValue("https://example.com/other@v1")
	wrongTypeLine, err := SignProvenance(wrongType, priv, "")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		envelope  []byte
		key       ed25519.PublicKey
		artifacts []Artifact
		opts      VerifyOptions
		wantErr   error
	}{
		{"untouched artifact verifies with all expectations", line, pub, []Artifact{good},
			VerifyOptions{ExpectedSource: testGitURL + "@" + testCommit, ExpectedBuilder: testBuilder}, nil},
		{"source given as bare URL verifies", line, pub, []Artifact{good}, VerifyOptions{ExpectedSource: testGitURL}, nil},
		{"several artifacts verify", line, pub, []Artifact{good, HashBytes("other.js", []byte("x"))}, VerifyOptions{}, nil},
		{"one changed byte of the artifact fails", line, pub, []Artifact{HashBytes("app.tgz", changed)}, VerifyOptions{}, ErrSubjectMismatch},
		{"one artifact not in the subjects fails", line, pub, []Artifact{good, HashBytes("extra", []byte("y"))}, VerifyOptions{}, ErrSubjectMismatch},
		{"one changed byte of the payload fails", mutateEnvelope(t, line, func(e *dsse.Envelope) {
			e.Payload = flipB64(t, e.Payload, 40)
		}), pub, []Artifact{good}, VerifyOptions{}, ErrSignatureInvalid},
		{"one changed byte of the signature fails", mutateEnvelope(t, line, func(e *dsse.Envelope) {
			e.Signatures[0].Sig = flipB64(t, e.Signatures[0].Sig, 7)
		}), pub, []Artifact{good}, VerifyOptions{}, ErrSignatureInvalid},
		{"changed payload type fails", mutateEnvelope(t, line, func(e *dsse.Envelope) {
			e.PayloadType = "application/json"
		}), pub, []Artifact{good}, VerifyOptions{}, ErrEnvelopeMalformed},
		{"another key fails", line, otherPub, []Artifact{good}, VerifyOptions{}, ErrSignatureInvalid},
		{"a misleading keyid does not matter, the key does", mutateEnvelope(t, line, func(e *dsse.Envelope) {
			e.Signatures[0].KeyID = "someone-else"
		}), pub, []Artifact{good}, VerifyOptions{}, nil},
		{"no signatures fails", mutateEnvelope(t, line, func(e *dsse.Envelope) {
			e.Signatures = nil
		}), pub, []Artifact{good}, VerifyOptions{}, ErrEnvelopeMalformed},
		{"another source fails", line, pub, []Artifact{good}, VerifyOptions{ExpectedSource: "https://git.example/team/evil.git"}, ErrSourceMismatch},
		{"another commit fails", line, pub, []Artifact{good}, VerifyOptions{ExpectedSource: testGitURL + "@" + strings.Repeat("f", 40)}, ErrSourceMismatch},
		{"another builder fails", line, pub, []Artifact{good}, VerifyOptions{ExpectedBuilder: "https://cleanroom.local/runners/r-evil"}, ErrBuilderMismatch},
		{"foreign build type fails", wrongTypeLine, pub, []Artifact{good}, VerifyOptions{}, ErrBuildTypeMismatch},
		{"garbage fails", []byte("{not json"), pub, []Artifact{good}, VerifyOptions{}, ErrEnvelopeMalformed},
		{"two envelopes fail", append(append([]byte(nil), line...), line...), pub, []Artifact{good}, VerifyOptions{}, ErrEnvelopeMalformed},
		{"no artifacts fails", line, pub, nil, VerifyOptions{}, ErrNoArtifacts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := VerifyProvenance(tc.envelope, tc.key, tc.artifacts, tc.opts)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("want verified, got %v", err)
				}
				if v.Source.Commit != testCommit || len(v.Matches) != len(tc.artifacts) {
					t.Fatalf("verified = %+v", v)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("want %v, got %v", tc.wantErr, err)
			}
		})
	}
}

func TestProvenanceRejectsIncompleteInput(t *testing.T) {
	good := HashBytes("a", []byte("a"))
	tests := []struct {
		name string
		edit func(in *ProvenanceInput)
	}{
		{"no artifacts", func(in *ProvenanceInput) { in.Artifacts = nil }},
		{"artifact without digest", func(in *ProvenanceInput) { in.Artifacts = []Artifact{{Name: "a"}} }},
		{"no builder", func(in *ProvenanceInput) { in.BuilderID = "" }},
		{"git URL without commit", func(in *ProvenanceInput) { in.Source = Source{GitURL: testGitURL} }},
		{"no source", func(in *ProvenanceInput) { in.Source = Source{} }},
		{"both git and upload", func(in *ProvenanceInput) { in.Source.UploadSHA256 = good.SHA256 }},
		{"image digest without algorithm", func(in *ProvenanceInput) { in.NodeImageDigest = "abc" }},
		{"job spec that is not JSON", func(in *ProvenanceInput) { in.JobSpec = map[string]any{"f": func() {}} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput(good)
			tc.edit(&in)
			if _, err := Provenance(in); !errors.Is(err, ErrProvenanceInput) {
				t.Fatalf("want ErrProvenanceInput, got %v", err)
			}
		})
	}
}

func TestVerifyProvenanceUploadSource(t *testing.T) {
	pub, priv := GenerateKey()
	art := HashBytes("dist/app.tgz", []byte("artifact"))
	in := testInput(art)
	upload := HashBytes("src.tar.gz", []byte("source archive")).SHA256
	in.Source = Source{UploadSHA256: upload}
	stmt, err := Provenance(in)
	if err != nil {
		t.Fatal(err)
	}
	line, err := SignProvenance(stmt, priv, "k")
	if err != nil {
		t.Fatal(err)
	}
	for _, expected := range []string{upload, "sha256:" + upload} {
		if _, err := VerifyProvenance(line, pub, []Artifact{art}, VerifyOptions{ExpectedSource: expected}); err != nil {
			t.Errorf("expected source %q: %v", expected, err)
		}
	}
	if _, err := VerifyProvenance(line, pub, []Artifact{art}, VerifyOptions{ExpectedSource: testGitURL}); !errors.Is(err, ErrSourceMismatch) {
		t.Errorf("git expectation on an upload: want ErrSourceMismatch, got %v", err)
	}
}

func TestKeyPEMRoundTrip(t *testing.T) {
	pub, priv := GenerateKey()
	privPEM, err := EncodePrivateKeyPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := EncodePublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	priv2, err := ParsePrivateKeyPEM(privPEM)
	if err != nil || !priv2.Equal(priv) {
		t.Fatalf("private key round trip: %v", err)
	}
	pub2, err := ParsePublicKeyPEM(pubPEM)
	if err != nil || !pub2.Equal(pub) {
		t.Fatalf("public key round trip: %v", err)
	}
	bad := []struct {
		name string
		fn   func() error
	}{
		{"public PEM as private", func() error { _, err := ParsePrivateKeyPEM(pubPEM); return err }},
		{"private PEM as public", func() error { _, err := ParsePublicKeyPEM(privPEM); return err }},
		{"not PEM", func() error { _, err := ParsePublicKeyPEM([]byte("hello")); return err }},
		{"corrupt DER", func() error {
			_, err := ParsePublicKeyPEM([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
			return err
		}},
	}
	for _, b := range bad {
		if err := b.fn(); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: want ErrBadKey, got %v", b.name, err)
		}
	}
}
