package supplychain

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	provenance "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Identifiers written into and checked in provenance.
const (
	// BuildType names cleanroom's npm build recipe; externalParameters are
	// interpreted according to it.
	BuildType = "https://github.com/cleanroom-ci/cleanroom/buildtypes/npm@v1"
	// PredicateTypeSLSAProvenanceV1 is the SLSA provenance v1 predicate type.
	PredicateTypeSLSAProvenanceV1 = "https://slsa.dev/provenance/v1"
	// PayloadTypeInToto is the DSSE payload type of in-toto statements.
	PayloadTypeInToto = "application/vnd.in-toto+json"
	// ProvenanceFile is the conventional file name of the signed envelope.
	ProvenanceFile = "provenance.intoto.jsonl"
	// SBOMFile is the conventional file name of a job's CycloneDX SBOM.
	SBOMFile = "sbom.cdx.json"
)

// Provenance errors. Verification failures are distinct so cleanroom verify
// can say exactly what did not match.
var (
	ErrProvenanceInput   = errors.New("invalid provenance input")
	ErrEnvelopeMalformed = errors.New("malformed provenance envelope")
	ErrSignatureInvalid  = errors.New("provenance signature does not verify with the given key")
	ErrStatementInvalid  = errors.New("invalid provenance statement")
	ErrSubjectMismatch   = errors.New("artifact digest matches no provenance subject")
	ErrBuildTypeMismatch = errors.New("provenance build type is not cleanroom's")
	ErrSourceMismatch    = errors.New("provenance source does not match")
	ErrBuilderMismatch   = errors.New("provenance builder does not match")
	ErrNoArtifacts       = errors.New("no artifacts to verify")
)

// Artifact is a build output named by its path relative to the workspace
// and identified by its sha256 (lowercase hex).
type Artifact struct {
	Name   string
	SHA256 string
}

// HashFile streams a file into an Artifact named by path.
func HashFile(path string) (Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return Artifact{}, fmt.Errorf("hashing artifact: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Artifact{}, fmt.Errorf("hashing artifact %s: %w", path, err)
	}
	return Artifact{Name: filepath.ToSlash(path), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// HashBytes makes an Artifact from in-memory content.
func HashBytes(name string, data []byte) Artifact {
	sum := sha256.Sum256(data)
	return Artifact{Name: name, SHA256: hex.EncodeToString(sum[:])}
}

// Source is what a job built: a git URL at a commit, or an uploaded
// archive identified by its sha256. Exactly one form is set.
type Source struct {
	GitURL       string
	Commit       string
	UploadSHA256 string
}

// URI is the source's resolvedDependencies URI: "git+URL@COMMIT" for git
// (the SLSA convention) or "upload:sha256:HEX" for an uploaded archive.
func (s Source) URI() string {
	if s.UploadSHA256 != "" {
		return "upload:sha256:" + s.UploadSHA256
	}
	return "git+" + strings.TrimPrefix(s.GitURL, "git+") + "@" + s.Commit
}

// Matches reports whether a user's expectation names this source. Accepted
// forms: for git, the URL (any commit), URL@COMMIT, git+URL@COMMIT or the
// bare commit; for an upload, HEX or sha256:HEX.
func (s Source) Matches(expected string) bool {
	if expected == "" {
		return false
	}
	if s.UploadSHA256 != "" {
		e := strings.TrimPrefix(strings.TrimPrefix(expected, "upload:"), "sha256:")
		return strings.EqualFold(e, s.UploadSHA256)
	}
	url := strings.TrimPrefix(s.GitURL, "git+")
	e := strings.TrimPrefix(expected, "git+")
	return e == url || e == url+"@"+s.Commit || (s.Commit != "" && e == s.Commit)
}

func (s Source) validate() error {
	git := s.GitURL != "" || s.Commit != ""
	switch {
	case git && s.UploadSHA256 != "":
		return errors.New("source is both git and upload")
	case git && (s.GitURL == "" || s.Commit == ""):
		return errors.New("git source needs both URL and commit")
	case !git && !isHex(s.UploadSHA256, 64):
		return errors.New("source needs a git URL and commit, or an upload sha256")
	}
	return nil
}

func (s Source) params() map[string]any {
	if s.UploadSHA256 != "" {
		return map[string]any{"kind": "upload", "sha256": s.UploadSHA256}
	}
	return map[string]any{"kind": "git", "url": s.GitURL, "commit": s.Commit}
}

func (s Source) descriptor() *intoto.ResourceDescriptor {
	if s.UploadSHA256 != "" {
		return &intoto.ResourceDescriptor{Name: "source", Uri: s.URI(), Digest: map[string]string{"sha256": s.UploadSHA256}}
	}
	return &intoto.ResourceDescriptor{Name: "source", Uri: s.URI(), Digest: map[string]string{"gitCommit": s.Commit}}
}

// ProvenanceInput is what the agent knows about a finished build.
type ProvenanceInput struct {
	// Artifacts become the statement's subjects.
	Artifacts []Artifact
	Source    Source
	// JobSpec is the job as submitted; it is recorded verbatim (after a
	// JSON round trip) in externalParameters.
	JobSpec map[string]any
	// NodeImage is the image reference; NodeImageDigest its "sha256:HEX".
	NodeImage       string
	NodeImageDigest string
	// LockfileName defaults to package-lock.json; LockfileSHA256 is
	// Lockfile.SHA256.
	LockfileName   string
	LockfileSHA256 string
	// BuilderID identifies the runner, e.g. https://cleanroom.local/runners/r-7f3a.
	BuilderID string
	// JobID becomes the invocationId.
	JobID      string
	StartedOn  time.Time
	FinishedOn time.Time
}

// Provenance builds the in-toto Statement v1 with an SLSA provenance v1
// predicate describing a build, ready for SignProvenance.
func Provenance(in ProvenanceInput) (*intoto.Statement, error) {
	if len(in.Artifacts) == 0 {
		return nil, fmt.Errorf("%w: no artifacts", ErrProvenanceInput)
	}
	if in.BuilderID == "" {
		return nil, fmt.Errorf("%w: no builder id", ErrProvenanceInput)
	}
	if err := in.Source.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProvenanceInput, err)
	}
	subjects := make([]*intoto.ResourceDescriptor, 0, len(in.Artifacts))
	for _, a := range in.Artifacts {
		if a.Name == "" || !isHex(a.SHA256, 64) {
			return nil, fmt.Errorf("%w: artifact %q needs a name and a hex sha256", ErrProvenanceInput, a.Name)
		}
		subjects = append(subjects, &intoto.ResourceDescriptor{Name: a.Name, Digest: map[string]string{"sha256": strings.ToLower(a.SHA256)}})
	}

	job := map[string]any{}
	if in.JobSpec != nil {
		b, err := json.Marshal(in.JobSpec)
		if err != nil {
			return nil, fmt.Errorf("%w: encoding job spec: %v", ErrProvenanceInput, err)
		}
		if err := json.Unmarshal(b, &job); err != nil {
			return nil, fmt.Errorf("%w: decoding job spec: %v", ErrProvenanceInput, err)
		}
	}
	ext, err := structpb.NewStruct(map[string]any{"source": in.Source.params(), "job": job})
	if err != nil {
		return nil, fmt.Errorf("%w: building externalParameters: %v", ErrProvenanceInput, err)
	}

	deps := []*intoto.ResourceDescriptor{in.Source.descriptor()}
	if in.NodeImageDigest != "" {
		alg, h, ok := strings.Cut(in.NodeImageDigest, ":")
		if !ok {
			return nil, fmt.Errorf("%w: node image digest %q is not ALG:HEX", ErrProvenanceInput, in.NodeImageDigest)
		}
		rd := &intoto.ResourceDescriptor{Name: "node-image", Digest: map[string]string{alg: h}}
		if in.NodeImage != "" {
			rd.Uri = "oci://" + in.NodeImage
		}
		deps = append(deps, rd)
	}
	if in.LockfileSHA256 != "" {
		name := in.LockfileName
		if name == "" {
			name = PackageLockFile
		}
		deps = append(deps, &intoto.ResourceDescriptor{Name: name, Digest: map[string]string{"sha256": in.LockfileSHA256}})
	}

	meta := &provenance.BuildMetadata{InvocationId: in.JobID}
	if !in.StartedOn.IsZero() {
		meta.StartedOn = timestamppb.New(in.StartedOn)
	}
	if !in.FinishedOn.IsZero() {
		meta.FinishedOn = timestamppb.New(in.FinishedOn)
	}
	pred := &provenance.Provenance{
		BuildDefinition: &provenance.BuildDefinition{
			BuildType:            BuildType,
			ExternalParameters:   ext,
			ResolvedDependencies: deps,
		},
		RunDetails: &provenance.RunDetails{
			Builder:  &provenance.Builder{Id: in.BuilderID},
			Metadata: meta,
		},
	}
	if err := pred.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProvenanceInput, err)
	}
	predJSON, err := protojson.Marshal(pred)
	if err != nil {
		return nil, fmt.Errorf("encoding provenance predicate: %w", err)
	}
	predStruct := &structpb.Struct{}
	if err := protojson.Unmarshal(predJSON, predStruct); err != nil {
		return nil, fmt.Errorf("converting provenance predicate: %w", err)
	}
	stmt := &intoto.Statement{
		Type:          intoto.StatementTypeUri,
		Subject:       subjects,
		PredicateType: PredicateTypeSLSAProvenanceV1,
		Predicate:     predStruct,
	}
	if err := stmt.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProvenanceInput, err)
	}
	return stmt, nil
}

// ed25519SignerVerifier adapts an ed25519 key to DSSE.
type ed25519SignerVerifier struct {
	priv  ed25519.PrivateKey
	pub   ed25519.PublicKey
	keyID string
}

func (s *ed25519SignerVerifier) Sign(_ context.Context, data []byte) ([]byte, error) {
	return ed25519.Sign(s.priv, data), nil
}

func (s *ed25519SignerVerifier) Verify(_ context.Context, data, sig []byte) error {
	if !ed25519.Verify(s.pub, data, sig) {
		return ErrSignatureInvalid
	}
	return nil
}

func (s *ed25519SignerVerifier) KeyID() (string, error)   { return s.keyID, nil }
func (s *ed25519SignerVerifier) Public() crypto.PublicKey { return s.pub }

// SignProvenance signs a statement into a DSSE envelope and returns it as
// one JSON line (with a trailing newline), the content of
// provenance.intoto.jsonl. keyID is recorded as a hint (see KeyID).
func SignProvenance(stmt *intoto.Statement, priv ed25519.PrivateKey, keyID string) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("signing provenance: %w: private key has %d bytes", ErrBadKey, len(priv))
	}
	payload, err := protojson.Marshal(stmt)
	if err != nil {
		return nil, fmt.Errorf("encoding statement: %w", err)
	}
	signer, err := dsse.NewEnvelopeSigner(&ed25519SignerVerifier{priv: priv, keyID: keyID})
	if err != nil {
		return nil, fmt.Errorf("creating envelope signer: %w", err)
	}
	env, err := signer.SignPayload(context.Background(), PayloadTypeInToto, payload)
	if err != nil {
		return nil, fmt.Errorf("signing provenance: %w", err)
	}
	line, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("encoding envelope: %w", err)
	}
	return append(line, '\n'), nil
}

// VerifyOptions are optional expectations beyond signature and subjects.
type VerifyOptions struct {
	// ExpectedSource, when set, must match the recorded source (see
	// Source.Matches for the accepted forms).
	ExpectedSource string
	// ExpectedBuilder, when set, must equal runDetails.builder.id.
	ExpectedBuilder string
}

// Verified is what a successful verification established.
type Verified struct {
	Statement  *intoto.Statement
	Provenance *provenance.Provenance
	Source     Source
	// Matches maps each artifact name to the subject name it matched.
	Matches map[string]string
}

// VerifyProvenance checks a provenance.intoto.jsonl envelope: the DSSE
// signature against pub, that every artifact's sha256 is a subject of the
// statement, that the build type is cleanroom's, and the optional source
// and builder expectations. Any mismatch fails with a specific sentinel.
func VerifyProvenance(envelope []byte, pub ed25519.PublicKey, artifacts []Artifact, opts VerifyOptions) (*Verified, error) {
	if len(artifacts) == 0 {
		return nil, ErrNoArtifacts
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("verifying provenance: %w: public key has %d bytes", ErrBadKey, len(pub))
	}
	body, err := verifyEnvelope(envelope, pub)
	if err != nil {
		return nil, err
	}
	stmt := &intoto.Statement{}
	uo := protojson.UnmarshalOptions{DiscardUnknown: true}
	if err := uo.Unmarshal(body, stmt); err != nil {
		return nil, fmt.Errorf("%w: decoding statement: %v", ErrStatementInvalid, err)
	}
	if err := stmt.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	if stmt.GetType() != intoto.StatementTypeUri || stmt.GetPredicateType() != PredicateTypeSLSAProvenanceV1 {
		return nil, fmt.Errorf("%w: statement %q with predicate %q, want %q with %q", ErrStatementInvalid,
			stmt.GetType(), stmt.GetPredicateType(), intoto.StatementTypeUri, PredicateTypeSLSAProvenanceV1)
	}
	predJSON, err := protojson.Marshal(stmt.GetPredicate())
	if err != nil {
		return nil, fmt.Errorf("%w: encoding predicate: %v", ErrStatementInvalid, err)
	}
	pred := &provenance.Provenance{}
	if err := uo.Unmarshal(predJSON, pred); err != nil {
		return nil, fmt.Errorf("%w: decoding SLSA predicate: %v", ErrStatementInvalid, err)
	}
	if err := pred.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	v := &Verified{Statement: stmt, Provenance: pred, Matches: map[string]string{}}

	bySHA := map[string]string{}
	for _, s := range stmt.GetSubject() {
		if d := s.GetDigest()["sha256"]; d != "" {
			bySHA[strings.ToLower(d)] = s.GetName()
		}
	}
	for _, a := range artifacts {
		name, ok := bySHA[strings.ToLower(a.SHA256)]
		if !ok {
			return nil, fmt.Errorf("%w: %s has sha256 %s; subjects: %s", ErrSubjectMismatch, a.Name, a.SHA256, subjectList(stmt))
		}
		v.Matches[a.Name] = name
	}

	bd := pred.GetBuildDefinition()
	if bd.GetBuildType() != BuildType {
		return nil, fmt.Errorf("%w: %q", ErrBuildTypeMismatch, bd.GetBuildType())
	}
	v.Source = sourceFromParams(bd.GetExternalParameters())
	if opts.ExpectedSource != "" && !v.Source.Matches(opts.ExpectedSource) {
		return nil, fmt.Errorf("%w: recorded %s, expected %s", ErrSourceMismatch, v.Source.URI(), opts.ExpectedSource)
	}
	builder := pred.GetRunDetails().GetBuilder().GetId()
	if opts.ExpectedBuilder != "" && builder != opts.ExpectedBuilder {
		return nil, fmt.Errorf("%w: recorded %s, expected %s", ErrBuilderMismatch, builder, opts.ExpectedBuilder)
	}
	return v, nil
}

// verifyEnvelope decodes the single DSSE envelope and returns its payload
// once a signature verifies with pub.
func verifyEnvelope(data []byte, pub ed25519.PublicKey) ([]byte, error) {
	var env dsse.Envelope
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: decoding: %v", ErrEnvelopeMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one envelope", ErrEnvelopeMalformed)
	}
	if env.PayloadType != PayloadTypeInToto {
		return nil, fmt.Errorf("%w: payloadType %q, want %q", ErrEnvelopeMalformed, env.PayloadType, PayloadTypeInToto)
	}
	if len(env.Signatures) == 0 {
		return nil, fmt.Errorf("%w: no signatures", ErrEnvelopeMalformed)
	}
	// The keyid is only a hint: each signature is tried against pub, with
	// the verifier answering to that signature's keyid.
	for _, sig := range env.Signatures {
		one := env
		one.Signatures = []dsse.Signature{sig}
		ev, err := dsse.NewEnvelopeVerifier(&ed25519SignerVerifier{pub: pub, keyID: sig.KeyID})
		if err != nil {
			return nil, fmt.Errorf("creating envelope verifier: %w", err)
		}
		if _, body, err := ev.VerifyAndDecode(context.Background(), &one); err == nil {
			return body, nil
		}
	}
	return nil, fmt.Errorf("%w (key %s)", ErrSignatureInvalid, KeyID(pub))
}

func sourceFromParams(ext *structpb.Struct) Source {
	src := ext.GetFields()["source"].GetStructValue().GetFields()
	str := func(k string) string { return src[k].GetStringValue() }
	if str("kind") == "upload" {
		return Source{UploadSHA256: str("sha256")}
	}
	return Source{GitURL: str("url"), Commit: str("commit")}
}

func subjectList(stmt *intoto.Statement) string {
	var parts []string
	for _, s := range stmt.GetSubject() {
		parts = append(parts, s.GetName()+" sha256:"+s.GetDigest()["sha256"])
	}
	return strings.Join(parts, ", ")
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
