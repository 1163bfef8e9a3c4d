package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// maxSupplyDoc bounds how much of an SBOM or provenance envelope the
// console reads (a real one is far smaller).
const maxSupplyDoc = 32 << 20

// supplyChain is what a job page says about the job's SBOM and provenance.
type supplyChain struct {
	SBOM       *api.Artifact
	Components int
	SBOMError  string

	Provenance *api.Artifact
	// Verified is true when the provenance verified with the runner's
	// registered key; Detail says with which key, or why not.
	Verified bool
	Detail   string
}

func (c *Console) supplyChain(ctx context.Context, p Principal, j store.Job, arts []api.Artifact) supplyChain {
	var sc supplyChain
	for i := range arts {
		switch arts[i].Kind {
		case api.KindSBOM:
			sc.SBOM = &arts[i]
		case api.KindProvenance:
			sc.Provenance = &arts[i]
		}
	}
	if sc.SBOM != nil {
		n, err := c.sbomComponents(ctx, p, j.ID, sc.SBOM.Name)
		if err != nil {
			sc.SBOMError = err.Error()
		}
		sc.Components = n
	}
	if sc.Provenance != nil {
		err := c.verifyProvenance(ctx, p, j, arts, sc.Provenance.Name)
		if err != nil {
			sc.Detail = err.Error()
		} else {
			sc.Verified = true
			sc.Detail = "signature verified with the registered key of runner " + j.RunnerID + "; every artifact and the SBOM are subjects; source, builder and job match"
		}
	}
	return sc
}

func (c *Console) readArtifact(ctx context.Context, p Principal, job, name string) ([]byte, error) {
	rc, _, err := c.b.OpenArtifact(ctx, p, job, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSupplyDoc+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSupplyDoc {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, maxSupplyDoc)
	}
	return b, nil
}

// sbomComponents counts the components of a CycloneDX SBOM.
func (c *Console) sbomComponents(ctx context.Context, p Principal, job, name string) (int, error) {
	b, err := c.readArtifact(ctx, p, job, name)
	if err != nil {
		return 0, fmt.Errorf("reading the SBOM: %w", err)
	}
	var bom struct {
		BOMFormat  string            `json:"bomFormat"`
		Components []json.RawMessage `json:"components"`
	}
	if err := json.Unmarshal(b, &bom); err != nil || bom.BOMFormat != "CycloneDX" {
		return 0, errors.New("not a CycloneDX JSON document")
	}
	return len(bom.Components), nil
}

var fullCommit = regexp.MustCompile(`^[0-9a-f]{40}$`)

// verifyProvenance does what `cleanroom verify --coordinator` does with the
// job's stored artifacts: the envelope must verify with the registered key
// of the runner that ran the job (not revoked), name every other artifact
// of the job as a subject with its stored sha256, record the job's source,
// and name that runner as builder and the job as invocation.
func (c *Console) verifyProvenance(ctx context.Context, p Principal, j store.Job, arts []api.Artifact, name string) error {
	if j.RunnerID == "" {
		return errors.New("the job has no runner to verify against")
	}
	env, err := c.readArtifact(ctx, p, j.ID, name)
	if err != nil {
		return fmt.Errorf("reading the provenance: %w", err)
	}
	pub, revoked, err := c.b.RunnerKey(ctx, j.RunnerID)
	if err != nil {
		return fmt.Errorf("fetching the key of runner %s: %w", j.RunnerID, err)
	}
	if revoked != nil {
		return fmt.Errorf("runner %s was revoked at %s: its signatures are not trusted", j.RunnerID, revoked.UTC().Format(time.RFC3339))
	}
	var subjects []supplychain.Artifact
	for _, a := range arts {
		if a.Kind != api.KindProvenance {
			subjects = append(subjects, supplychain.Artifact{Name: a.Name, SHA256: a.SHA256})
		}
	}
	if len(subjects) == 0 {
		return errors.New("the job has no artifacts or SBOM for the provenance to cover")
	}
	src := j.Source.SHA256
	if j.Source.Kind == api.SourceGit {
		src = j.Source.URL
		if fullCommit.MatchString(j.Source.Commit) {
			src += "@" + j.Source.Commit
		}
	}
	v, err := supplychain.VerifyProvenance(env, pub, subjects, supplychain.VerifyOptions{ExpectedSource: src})
	if err != nil {
		return err
	}
	rd := v.Provenance.GetRunDetails()
	if b := rd.GetBuilder().GetId(); !strings.HasSuffix(b, "/runners/"+j.RunnerID) {
		return fmt.Errorf("%w: recorded %s, expected a builder id ending in /runners/%s", supplychain.ErrBuilderMismatch, b, j.RunnerID)
	}
	if inv := rd.GetMetadata().GetInvocationId(); inv != j.ID {
		return fmt.Errorf("the provenance is for job %q, not %s", inv, j.ID)
	}
	return nil
}
