package testutil

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"slices"
	"testing"
)

// TarGzNames returns the sorted entry names of a tar.gz archive, failing t
// if it cannot be read.
func TarGzNames(t testing.TB, r io.Reader) []string {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	slices.Sort(names)
	return names
}
