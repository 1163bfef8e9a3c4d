// Package integration owns cleanroom's end-to-end tests: the real binary run
// as a coordinator and as registered agents inside a lab of network
// namespaces (internal/lab), against a real containerd and a Verdaccio
// registry seeded with the examples' packages, driven only through the CLI a
// user would type (submit, status, logs, egress, artifacts, cancel, verify).
//
// The tests need root, a containerd with the node image
// ($CLEANROOM_CONTAINERD_ADDRESS; `make test` starts one) and Node.js for the
// registry. They assert outcomes a user or a security team would check —
// job states and reasons, logs, egress audit events, signed provenance —
// together with what the lab's forbidden host recorded and what is left on
// the machine afterwards (nothing). The harness they share with `make demo`
// lives in integration/harness; integration/cmd/demo is the demo driver.
package integration
