package layering

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// moduleRoot is the directory holding go.mod, above this package's directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

var (
	citedTest   = regexp.MustCompile(`\bTest[A-Z][A-Za-z0-9_]*`)
	definedTest = regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`)
)

// definedTests lists the test functions of every _test.go file under root.
func definedTests(t *testing.T, root string) map[string]bool {
	t.Helper()
	defined := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range definedTest.FindAllSubmatch(b, -1) {
			defined[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return defined
}

// missingCitations returns "doc:line: TestName" for every test name cited in doc that
// defined lacks.
func missingCitations(doc, name string, defined map[string]bool) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		for _, c := range citedTest.FindAllString(sc.Text(), -1) {
			if !defined[c] {
				out = append(out, name+":"+strconv.Itoa(n)+": "+c)
			}
		}
	}
	return out
}

// Every test docs/architecture.md names as holding an invariant exists, so the document
// cannot silently drift from the code: rename or remove a test and this fails until the
// document is updated too.
func TestArchitectureCitesExistingTests(t *testing.T) {
	root := moduleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatalf("docs/architecture.md: %v", err)
	}
	defined := definedTests(t, root)
	if len(defined) < 50 {
		t.Fatalf("found only %d test functions under %s: the walk missed the repository", len(defined), root)
	}
	cited := citedTest.FindAllString(string(b), -1)
	if len(cited) < 20 {
		t.Fatalf("docs/architecture.md cites %d tests; the check would prove nothing", len(cited))
	}
	for _, m := range missingCitations(string(b), "docs/architecture.md", defined) {
		t.Errorf("%s is cited but no test of that name exists: rename it in the document or restore the test", m)
	}
}

// The check finds a cited test that does not exist, with its line.
func TestMissingCitationsAreFound(t *testing.T) {
	defined := map[string]bool{"TestReal": true}
	got := missingCitations("held by `TestReal`\nand by `TestGone` and TestAlsoGone.\nTestament is a word", "doc.md", defined)
	want := []string{"doc.md:2: TestGone", "doc.md:2: TestAlsoGone"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
}
