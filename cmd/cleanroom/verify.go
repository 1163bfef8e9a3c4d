package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// maxProvenanceBytes bounds how much of a provenance file verify reads; a
// real envelope is a few kilobytes.
const maxProvenanceBytes = 16 << 20

// errRunnerKeyNotConfigured is what fetchRunnerKey reports until a
// coordinator client is wired in.
var errRunnerKeyNotConfigured = errors.New("fetching the runner key is not configured (no coordinator): pass --key PUB.pem")

// fetchRunnerKey obtains the public key of the runner that claims to have
// built an artifact (its builder id), for when --key is not given. It is a
// seam for the coordinator client: the --coordinator option replaces it with
// a lookup of the registered runner's key. The key it returns is only
// trusted to verify the signature; the builder id still has to match.
var fetchRunnerKey = func(ctx context.Context, builderID string) (ed25519.PublicKey, error) {
	return nil, errRunnerKeyNotConfigured
}

type verifyFlags struct {
	provenance  string
	key         string
	source      string
	builder     string
	coordinator *clientFlags
}

func init() {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify ARTIFACT... --provenance FILE (--key PUB.pem | --coordinator URL) [--source S] [--builder B]",
		Short: "Verify build artifacts against their signed SLSA provenance",
		Long: `verify checks that each ARTIFACT is a subject of the signed provenance a
cleanroom runner produced for it (provenance.intoto.jsonl): the DSSE signature
must verify with the runner's public key, every artifact's sha256 must be a
subject, and, when given, the source (git URL, URL@commit, commit, or the
upload's sha256) and the builder id must match.

Without --key, the key is fetched from the coordinator (--coordinator, or
--url / $CLEANROOM_URL): the public key that the runner named as builder in the
provenance registered with, refused if that runner has been revoked. The
coordinator is then the trust root: pass --builder too to pin the runner.

Exit status 0 when everything verifies, 1 with the precise reason otherwise.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), cmd.OutOrStdout(), args, f)
		},
	}
	cmd.Flags().StringVar(&f.provenance, "provenance", "", "signed provenance envelope (provenance.intoto.jsonl)")
	cmd.Flags().StringVar(&f.key, "key", "", "runner public key, PEM (PKIX ed25519)")
	cmd.Flags().StringVar(&f.source, "source", "", "expected source: git URL, URL@commit, commit, or upload sha256")
	cmd.Flags().StringVar(&f.builder, "builder", "", "expected builder id, e.g. https://cleanroom.local/runners/r-7f3a")
	f.coordinator = addClientFlags(cmd, false)
	cmd.Flags().StringVar(&f.coordinator.url, "coordinator", "", "coordinator URL to fetch the runner's registered key from (instead of --key)")
	_ = cmd.MarkFlagRequired("provenance")
	rootCmd.AddCommand(cmd)
}

func runVerify(ctx context.Context, out io.Writer, artifactPaths []string, f verifyFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	fail := func(format string, a ...any) error {
		return &exitError{code: 1, msg: "verification failed: " + fmt.Sprintf(format, a...)}
	}
	envelope, err := readLimited(f.provenance, maxProvenanceBytes)
	if err != nil {
		return fail("reading provenance: %v", err)
	}
	pub, err := verifyKey(ctx, f)
	if err != nil {
		return fail("%v", err)
	}
	artifacts := make([]supplychain.Artifact, 0, len(artifactPaths))
	for _, p := range artifactPaths {
		a, err := supplychain.HashFile(p)
		if err != nil {
			return fail("%v", err)
		}
		artifacts = append(artifacts, a)
	}
	v, err := supplychain.VerifyProvenance(envelope, pub, artifacts, supplychain.VerifyOptions{
		ExpectedSource:  f.source,
		ExpectedBuilder: f.builder,
	})
	if err != nil {
		return fail("%v", err)
	}

	pred := v.Provenance
	meta := pred.GetRunDetails().GetMetadata()
	fmt.Fprintf(out, "OK: provenance verified (key %s)\n", supplychain.KeyID(pub))
	fmt.Fprintf(out, "  builder:  %s\n", pred.GetRunDetails().GetBuilder().GetId())
	if id := meta.GetInvocationId(); id != "" {
		fmt.Fprintf(out, "  job:      %s\n", id)
	}
	if fin := meta.GetFinishedOn(); fin != nil {
		fmt.Fprintf(out, "  finished: %s\n", fin.AsTime().Format(time.RFC3339))
	}
	fmt.Fprintf(out, "  source:   %s\n", v.Source.URI())
	for _, a := range artifacts {
		fmt.Fprintf(out, "  artifact: %s sha256:%s (subject %s)\n", a.Name, a.SHA256, v.Matches[a.Name])
	}
	if f.source == "" || f.builder == "" {
		fmt.Fprintln(out, "  note: pass --source and --builder to also pin where and by whom it was built")
	}
	return nil
}

// verifyKey loads the verification key from --key, or asks fetchRunnerKey
// for the runner named by --builder.
func verifyKey(ctx context.Context, f verifyFlags) (ed25519.PublicKey, error) {
	if f.key != "" {
		data, err := readLimited(f.key, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("reading key: %w", err)
		}
		pub, err := supplychain.ParsePublicKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("reading key %s: %w", f.key, err)
		}
		return pub, nil
	}
	builder := f.builder
	if builder == "" {
		// The builder named in the (not yet verified) statement picks which
		// registered key to try; a forged statement naming another runner
		// still needs that runner's private key to verify.
		b, err := unverifiedBuilder(f.provenance)
		if err != nil {
			return nil, fmt.Errorf("no key: pass --key PUB.pem or --coordinator URL (%v)", err)
		}
		builder = b
	}
	if f.coordinator != nil {
		if cl, err := f.coordinator.client(); err == nil {
			fetchRunnerKey = func(ctx context.Context, builderID string) (ed25519.PublicKey, error) {
				return coordinatorKey(ctx, cl, builderID)
			}
		} else if f.coordinator.url != "" || os.Getenv("CLEANROOM_URL") != "" {
			return nil, err
		}
	}
	pub, err := fetchRunnerKey(ctx, builder)
	if err != nil {
		return nil, fmt.Errorf("fetching key of %s: %w", builder, err)
	}
	return pub, nil
}

func readLimited(path string, max int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return data, nil
}

// unverifiedBuilder reads the builder id from an envelope without checking
// its signature (only to choose which registered key to verify it with).
func unverifiedBuilder(path string) (string, error) {
	data, err := readLimited(path, maxProvenanceBytes)
	if err != nil {
		return "", err
	}
	var env struct {
		Payload []byte `json:"payload"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(data), &env); err != nil {
		return "", fmt.Errorf("reading envelope: %w", err)
	}
	var st struct {
		Predicate struct {
			RunDetails struct {
				Builder struct {
					ID string `json:"id"`
				} `json:"builder"`
			} `json:"runDetails"`
		} `json:"predicate"`
	}
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		return "", fmt.Errorf("reading statement: %w", err)
	}
	if st.Predicate.RunDetails.Builder.ID == "" {
		return "", errors.New("the provenance names no builder")
	}
	return st.Predicate.RunDetails.Builder.ID, nil
}

// coordinatorKey fetches the registered key of the runner a builder id
// names ("<coordinator>/runners/<id>").
func coordinatorKey(ctx context.Context, cl *api.Client, builderID string) (ed25519.PublicKey, error) {
	i := strings.LastIndex(builderID, "/runners/")
	if i < 0 {
		return nil, fmt.Errorf("builder id %q does not name a cleanroom runner (…/runners/ID)", builderID)
	}
	id := builderID[i+len("/runners/"):]
	rk, err := cl.RunnerKey(ctx, id)
	if err != nil {
		return nil, err
	}
	if rk.RevokedAt != nil {
		return nil, fmt.Errorf("runner %s (%s) was revoked at %s: its signatures are not trusted", rk.Name, rk.RunnerID, rk.RevokedAt.Format(time.RFC3339))
	}
	if rk.Algorithm != "ed25519" || len(rk.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("runner %s has no usable ed25519 key", id)
	}
	return ed25519.PublicKey(rk.PublicKey), nil
}
