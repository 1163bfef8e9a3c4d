package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
)

var updateLockfiles = flag.Bool("update-lockfiles", false,
	"regenerate the example lockfiles against a loopback Verdaccio (needs the npm registry once, to pack the seeds)")

// LabRegistryURL is the registry URL the committed lockfiles resolve to: the
// lab's registry name and port.
const labRegistryURL = "http://registry.cleanroom.test:4873/"

// evilURLPrefix is where the foreign-lockfile example's tampered entry points.
const evilURLPrefix = "https://evil.example.com/"

// publicRegistryURL is where the webapp example's lockfile resolves: it is
// committed as the public registry produced it.
const publicRegistryURL = "https://registry.npmjs.org/"

// exampleProjects are the example folders with a lockfile; foreign is the one
// whose lockfile is tampered on purpose; public ones resolve at the public
// registry and have their own package list (webapp).
var exampleProjects = []struct {
	dir     string
	foreign bool
	public  bool
}{
	{dir: "hello"},
	{dir: "deploy-secret"},
	{dir: "evil-postinstall"},
	{dir: "foreign-lockfile", foreign: true},
	{dir: "webapp", public: true},
}

// lockfile is the part of package-lock.json v3 the checks read.
type lockfile struct {
	LockfileVersion int                     `json:"lockfileVersion"`
	Packages        map[string]lockedPackge `json:"packages"`
}

type lockedPackge struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Resolved  string `json:"resolved"`
	Integrity string `json:"integrity"`
	Link      bool   `json:"link"`
}

// lockedSpecs returns name@version → entry for every installed package.
func lockedSpecs(t *testing.T, lf lockfile) map[string]lockedPackge {
	t.Helper()
	out := map[string]lockedPackge{}
	for key, p := range lf.Packages {
		if key == "" || p.Link {
			continue
		}
		name := p.Name
		if name == "" {
			i := strings.LastIndex(key, "node_modules/")
			name = key[i+len("node_modules/"):]
		}
		out[name+"@"+p.Version] = p
	}
	return out
}

func readLockfile(t *testing.T, path string) lockfile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lf lockfile
	if err := json.Unmarshal(b, &lf); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return lf
}

// TestExampleLockfiles checks the committed lockfiles: version 3, every
// package resolved at the lab registry with an integrity value (except the
// one tampered entry of foreign-lockfile, and webapp, resolved at the public
// registry), local packages' integrity equal to the committed tarball's,
// registry-packages.txt exactly the closure of what the lab lockfiles
// resolve and registry-packages-webapp.txt exactly webapp's. With
// -update-lockfiles it first regenerates them against a loopback Verdaccio.
func TestExampleLockfiles(t *testing.T) {
	dir := examplesDir(t)
	if *updateLockfiles {
		generateLockfiles(t, dir)
	}
	manifest, err := ExamplePackages(dir)
	if err != nil {
		t.Fatal(err)
	}
	webapp, err := WebappPackages(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(webapp) < 300 {
		t.Errorf("%s lists %d packages, want the real-world-sized example's 300+", WebappManifestFile, len(webapp))
	}
	tarballs, err := ExampleTarballs(dir)
	if err != nil {
		t.Fatal(err)
	}
	local := map[string]string{} // spec → integrity
	for _, p := range tarballs {
		tb, err := readTarball(p)
		if err != nil {
			t.Fatal(err)
		}
		local[tb.name+"@"+tb.version] = Integrity(tb.data)
	}
	if len(local) == 0 {
		t.Fatal("no local example tarballs found")
	}

	used := map[string]bool{}       // by the lab lockfiles
	usedPublic := map[string]bool{} // by webapp's
	for _, ex := range exampleProjects {
		lf := readLockfile(t, filepath.Join(dir, ex.dir, "package-lock.json"))
		if lf.LockfileVersion != 3 {
			t.Errorf("%s: lockfileVersion %d, want 3", ex.dir, lf.LockfileVersion)
		}
		wantPrefix, list, listName, seen := labRegistryURL, manifest, ManifestFile, used
		if ex.public {
			wantPrefix, list, listName, seen = publicRegistryURL, webapp, WebappManifestFile, usedPublic
		}
		foreign := 0
		for spec, p := range lockedSpecs(t, lf) {
			seen[spec] = true
			switch {
			case p.Integrity == "":
				t.Errorf("%s: %s has no integrity", ex.dir, spec)
			case ex.foreign && strings.HasPrefix(p.Resolved, evilURLPrefix):
				foreign++
			case !strings.HasPrefix(p.Resolved, wantPrefix):
				t.Errorf("%s: %s resolved at %q, want under %s", ex.dir, spec, p.Resolved, wantPrefix)
			}
			if want, ok := local[spec]; ok && p.Integrity != want {
				t.Errorf("%s: %s integrity %s differs from the committed tarball's %s", ex.dir, spec, p.Integrity, want)
			}
			if _, ok := local[spec]; !ok && !slices.Contains(list, spec) {
				t.Errorf("%s: %s is missing from %s", ex.dir, spec, listName)
			}
		}
		if ex.foreign && foreign != 1 {
			t.Errorf("%s: %d entries resolved at %s, want exactly 1", ex.dir, foreign, evilURLPrefix)
		}
	}
	for _, spec := range manifest {
		if !used[spec] {
			t.Errorf("%s lists %s, which no example lockfile uses", ManifestFile, spec)
		}
	}
	for _, spec := range webapp {
		if !usedPublic[spec] {
			t.Errorf("%s lists %s, which the webapp lockfile does not use", WebappManifestFile, spec)
		}
	}
	for spec := range local {
		if !used[spec] {
			t.Errorf("local tarball %s is used by no example lockfile", spec)
		}
	}
}

// generateLockfiles regenerates every example's package-lock.json against a
// seeded loopback Verdaccio, then rewrites the registry part of the resolved
// URLs to the lab registry name, or for webapp to the public registry (the
// tarballs are the public registry's, byte for byte: the lockfile is the
// one the public registry gives for the seeded versions). Integrity values
// are unchanged.
func generateLockfiles(t *testing.T, dir string) {
	r := startSeeded(t)
	if err := r.SeedWebapp(t.Context(), dir); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	npmrc := filepath.Join(tmp, "npmrc")
	if err := r.WriteNpmrc(npmrc, "", ""); err != nil {
		t.Fatal(err)
	}
	for _, ex := range exampleProjects {
		work := filepath.Join(tmp, ex.dir)
		copyFiles(t, filepath.Join(dir, ex.dir), work, "package.json")
		npm(t, work, "install", "--package-lock-only", "--ignore-scripts",
			"--omit-lockfile-registry-resolved=false", "--lockfile-version=3",
			"--userconfig", npmrc, "--cache", filepath.Join(tmp, "cache"))
		b, err := os.ReadFile(filepath.Join(work, "package-lock.json"))
		if err != nil {
			t.Fatal(err)
		}
		to := labRegistryURL
		if ex.public {
			to = publicRegistryURL
		}
		b = bytes.ReplaceAll(b, []byte(`"resolved": "`+r.URL), []byte(`"resolved": "`+to))
		if ex.foreign {
			// The tampered entry: picocolors from somewhere that is not the
			// internal registry, integrity left as it was.
			from := []byte(`"resolved": "` + labRegistryURL + `picocolors/`)
			if !bytes.Contains(b, from) {
				t.Fatalf("%s: no picocolors entry to tamper with", ex.dir)
			}
			b = bytes.Replace(b, from, []byte(`"resolved": "`+evilURLPrefix+`picocolors/`), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, ex.dir, "package-lock.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s/package-lock.json", ex.dir)
	}
}

// TestExampleJobSpecs parses every example's cleanroom.yaml strictly as an
// api.JobSpec and validates it.
func TestExampleJobSpecs(t *testing.T) {
	dir := examplesDir(t)
	specs, err := filepath.Glob(filepath.Join(dir, "*", "cleanroom.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) < 5 {
		t.Fatalf("found %d job specs, want at least 5", len(specs))
	}
	for _, p := range specs {
		name := filepath.Base(filepath.Dir(p))
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			dec := yaml.NewDecoder(bytes.NewReader(b))
			dec.KnownFields(true)
			var s api.JobSpec
			if err := dec.Decode(&s); err != nil {
				t.Fatalf("parsing: %v", err)
			}
			if err := s.Validate(); err != nil {
				t.Fatalf("validating: %v", err)
			}
			if s.Timeout == 0 || s.Resources.Memory == 0 || len(s.Artifacts) == 0 {
				t.Errorf("timeout, resources.memory and artifacts should be set: %+v", s)
			}
		})
	}
}

// The committed tarball of each local package is its source folder packed:
// every file of packages/<name>/ is in packages/*.tgz with the same bytes
// (a source edited without repacking would never reach a test or the demo).
func TestLocalTarballsHoldTheirSources(t *testing.T) {
	dir := filepath.Join(examplesDir(t), "packages")
	tgzs, err := ExampleTarballs(examplesDir(t))
	if err != nil || len(tgzs) == 0 {
		t.Fatalf("no local tarballs (%v)", err)
	}
	for _, p := range tgzs {
		files := tarballFiles(t, p)
		tb, err := readTarball(p)
		if err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(dir, strings.TrimPrefix(tb.name[strings.LastIndex(tb.name, "/")+1:], "@"))
		ents, err := os.ReadDir(src)
		if err != nil {
			t.Fatalf("%s: its source folder: %v", filepath.Base(p), err)
		}
		for _, e := range ents {
			want, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := files[e.Name()]
			if e.Name() == "package.json" {
				// npm pack normalizes package.json; compare what it means.
				var a, b any
				ok = ok && json.Unmarshal(got, &a) == nil && json.Unmarshal(want, &b) == nil && reflect.DeepEqual(a, b)
			} else {
				ok = ok && bytes.Equal(got, want)
			}
			if !ok {
				t.Errorf("%s does not hold the current %s: repack it (examples/README.md) and update the lockfile's integrity", filepath.Base(p), filepath.Join(src, e.Name()))
			}
		}
	}
}

// tarballFiles reads the regular files of a package tarball by their path
// below its top folder.
func tarballFiles(t *testing.T, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		_, rel, _ := strings.Cut(h.Name, "/")
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[rel] = b
	}
}
