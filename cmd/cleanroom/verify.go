package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

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
	provenance string
	key        string
	source     string
	builder    string
}

func init() {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify ARTIFACT... --provenance FILE --key PUB.pem [--source S] [--builder B]",
		Short: "Verify build artifacts against their signed SLSA provenance",
		Long: `verify checks that each ARTIFACT is a subject of the signed provenance a
cleanroom runner produced for it (provenance.intoto.jsonl): the DSSE signature
must verify with the runner's public key, every artifact's sha256 must be a
subject, and, when given, the source (git URL, URL@commit, commit, or the
upload's sha256) and the builder id must match.

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
	if f.builder == "" {
		return nil, errors.New("no key: pass --key PUB.pem (or --builder with a coordinator to fetch the runner's key)")
	}
	pub, err := fetchRunnerKey(ctx, f.builder)
	if err != nil {
		return nil, fmt.Errorf("fetching key of %s: %w", f.builder, err)
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
