// Package supplychain owns the supply-chain checks and records of a build:
// the lockfile gate that runs before any sandbox exists (npm ci only, allowed
// registries, sha512 integrity, name-confusion guard), the install-script
// policy, the CycloneDX SBOM of the installed packages, and the in-toto/SLSA
// provenance statement with its DSSE signature and verification.
//
// It imports no other cleanroom package: the agent composes it with the
// sandbox, network policy and secrets packages, and the CLI uses it to verify
// provenance offline.
package supplychain
