// Package secrets owns everything a build job may learn about credentials:
// where secret values come from (a permission-checked YAML file, the
// environment, files) and which scope each belongs to, which secrets a job may
// be granted (build scope only), the job's environment built from scratch (never
// inherited from the agent), the per-job .npmrc and npm's registry settings
// (naming the job's registry gateway; never a credential: the agent reads
// the upstream credentials for the gateway, Store.Credential), and the streaming redactor that keeps every known secret — in
// its common encodings — and well-known token shapes out of logs and audit
// events.
//
// The seed threat is a postinstall script that dumps its environment and ships
// the tokens it finds: nothing worth stealing may enter a sandbox, and nothing
// secret may be printed where people can read it. The package imports no other
// package of the project; the agent composes it with the sandbox and network
// policy.
package secrets
