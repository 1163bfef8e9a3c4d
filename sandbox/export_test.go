package sandbox

// WithSharedDirForTest bind-mounts a host directory read-write into the
// sandbox: a test hook (Options offers read-only mounts only) to show that
// a file one sandbox writes there is not writable from another.
func WithSharedDirForTest(o *Options, src, dst string) {
	o.testRW = append(o.testRW, Mount{Source: src, Destination: dst})
}
