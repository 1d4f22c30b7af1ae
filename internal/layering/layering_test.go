package layering

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const module = "github.com/boardvisor/boardvisor"

// A rule says which of our package groups a group may import. A group is a top-level
// directory of the module (jobs, actors, ...): its packages may always import each
// other. Anything of ours not listed in may is forbidden; packages outside the module
// (the standard library, dependencies) are not this test's business.
//
// The order is the layering of docs/architecture.md, top down:
//
//	cmd, tests → client → supervisor → actors | coordinator | audit → connector → jobs | drivers | proto
//	cmd, tests → web → coordinator (the dashboard, beside the client)
type rule struct {
	group string
	may   []string
	// testMay are groups only the group's tests may import, each for a reason said
	// in why.
	testMay []string
	why     string
}

var rules = []rule{
	{group: "jobs", may: []string{"diskspace"}, why: "jobs is the business rules of a lease (phases, the transition table, " +
		"hook-line parsing) with no I/O, and jobs/hook and jobs/journal are the leaf mechanisms " +
		"under them (the shim, the write-ahead journal). Everything above uses them, so they use " +
		"nothing of ours: the journal's record types live in jobs so that the store is a leaf and " +
		"the actors can use the same types without a back edge."},
	{group: "drivers", may: []string{"diskspace"}, testMay: []string{"actors"}, why: "drivers are board I/O (serial, power, " +
		"simulated and QEMU boards) behind small interfaces; they know nothing of leases, events or " +
		"actors, so that each can be tested with a pty and nothing else. (drivers_test checks at " +
		"compile time that every driver fits actors/driver's Driver, the interface it is run by.)"},
	{group: "images", may: []string{"jobs"}, why: "the image store fetches, verifies and keeps " +
		"OCI images for image jobs; like the drivers it is board-side I/O that knows nothing of " +
		"leases' actors or the link, and it speaks jobs' ImageSpec. (images/registrytest runs a real " +
		"registry for the tests above it.)"},
	{group: "proto", why: "the generated wire types depend only on each other (boardvisor/v1 reuses " +
		"jumpstarter/v1's enums)."},
	{group: "connector", may: []string{"jobs", "drivers", "proto", "diskspace"}, why: "the connector is the " +
		"coordinator link as Go interfaces and event types (and its gRPC and local transports); " +
		"actors and the coordinator both build on it, so it cannot know either of them."},
	{group: "audit", may: []string{"connector", "jobs"}, why: "the audit log records connector " +
		"events for both daemons; a daemon wires it in, so it knows neither daemon."},
	{group: "actors", may: []string{"connector", "jobs", "drivers"}, why: "the actors perform the " +
		"effects jobs decides and speak connector's Go types, not wire types (proto stays at the " +
		"edges: connector/grpc, supervisor/exporter, coordinator); they are assembled by the " +
		"supervisor and must not know it, the coordinator or any client."},
	{group: "coordinator", may: []string{"connector", "jobs", "proto", "audit"}, why: "the " +
		"coordinator meets supervisors only over the link (connector/grpc, proto) and never runs " +
		"actors: a supervisor's state reaches it as events, never as shared memory."},
	{group: "supervisor", may: []string{"actors", "connector", "jobs", "drivers", "images", "proto", "audit", "diskspace"},
		testMay: []string{"client"}, why: "the supervisor assembles one host's daemon (config, actor " +
			"tree, client service, devices, metrics); clients are built on its services, not the other " +
			"way round, and it reaches the coordinator only through the connector. (Its tests drive the " +
			"client service with the real client, to check the dialogue a user sees.)"},
	{group: "client", may: []string{"supervisor", "actors", "coordinator", "audit", "connector", "jobs", "drivers", "images", "proto", "diskspace"},
		why: "the client is the user's side of a lease (the hook dialogue); the command line is " +
			"built on it, not the other way round."},
	{group: "web", may: []string{"coordinator", "proto"}, why: "the web dashboard is a client of " +
		"the coordinator, served by its process: it reads the farm through the coordinator's " +
		"LeaseService (in process, with each user's token, so the coordinator's own access checks " +
		"decide) and its change feed; the coordinator does not know it, and it knows no supervisor, " +
		"actor or driver: a board's state reaches it only as the coordinator stored it."},
	{group: "cmd", may: []string{"client", "supervisor", "actors", "coordinator", "web", "audit", "connector", "jobs", "drivers", "images", "proto", "diskspace"},
		why: "cmd/boardvisor is the one binary: it may wire everything; nothing imports it."},
	{group: "tests", may: []string{"client", "supervisor", "actors", "coordinator", "web", "audit", "connector", "jobs", "drivers", "images", "proto", "diskspace"},
		why: "the end-to-end tests and benchmarks may reach into anything; nothing imports them."},
	{group: "internal", why: "repository checks (this package) import nothing of ours."},
	{group: "diskspace", why: "internal/diskspace watches the state directory's free space (a " +
		"reserve released on a full disk, the low and full states) for every writer in it: the " +
		"journal, the outbox, the recordings. A leaf any layer may use, it imports nothing of ours."},
}

// pkg is what `go list -json` says of one of our packages.
type pkg struct {
	ImportPath                         string
	Dir                                string
	GoFiles, CgoFiles                  []string
	TestGoFiles, XTestGoFiles          []string
	Imports, TestImports, XTestImports []string
	Error                              *struct{ Err string }
}

// listPackages runs `go list -e -json` on the whole module. With -e a package that does
// not load (an import cycle: the back edge this test looks for, when it closes a loop)
// is still listed with its imports; its error is reported after the rule's verdict.
func listPackages(t *testing.T) []pkg {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "list", "-e", "-json", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages of %s: not the whole module", len(pkgs), module)
	}
	return pkgs
}

// groupOf returns the group of one of our import paths ("" for the module root or
// something not ours).
func groupOf(path string) string {
	rest, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return ""
	}
	// Leaf utilities under internal/ are groups of their own, named by their directory.
	if u, ok := strings.CutPrefix(rest, "internal/"); ok && !strings.HasPrefix(u, "layering") {
		g, _, _ := strings.Cut(u, "/")
		return g
	}
	g, _, _ := strings.Cut(rest, "/")
	return g
}

func ruleOf(group string) *rule {
	for i := range rules {
		if rules[i].group == group {
			return &rules[i]
		}
	}
	return nil
}

// importSite names the file and line of p's files (of the given kind) that import path.
func importSite(p pkg, files []string, path string) string {
	fset := token.NewFileSet()
	for _, f := range files {
		name := filepath.Join(p.Dir, f)
		af, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			continue
		}
		for _, is := range af.Imports {
			if v, _ := strconv.Unquote(is.Path.Value); v == path {
				pos := fset.Position(is.Pos())
				return fmt.Sprintf("%s:%d", strings.TrimPrefix(p.ImportPath, module+"/")+"/"+f, pos.Line)
			}
		}
	}
	return strings.TrimPrefix(p.ImportPath, module+"/")
}

// violations checks every package's imports (of its code and of its tests) against the
// rules and returns one line per offending import.
func violations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		g := groupOf(p.ImportPath)
		r := ruleOf(g)
		if r == nil {
			out = append(out, fmt.Sprintf("package %s is in no group of the layering table (rules in internal/layering/layering_test.go): add its group %q with what it may import and why", p.ImportPath, g))
			continue
		}
		check := func(imports, files []string, test bool) {
			for _, imp := range imports {
				ig := groupOf(imp)
				if ig == "" || ig == g || slices.Contains(r.may, ig) || (test && slices.Contains(r.testMay, ig)) {
					continue
				}
				if ig == "cmd" || ig == "tests" {
					// Main packages; the compiler refuses these anyway.
					continue
				}
				what := "code"
				if test {
					what = "test"
				}
				allowed := "may import nothing of ours outside " + g
				if len(r.may) > 0 {
					allowed = "may import only " + g + ", " + strings.Join(r.may, ", ")
				}
				out = append(out, fmt.Sprintf("%s imports %s: %s %s %s. Why: %s",
					importSite(p, files, imp), strings.TrimPrefix(imp, module+"/"), g, what, allowed, r.why))
			}
		}
		check(p.Imports, append(slices.Clone(p.GoFiles), p.CgoFiles...), false)
		check(p.TestImports, p.TestGoFiles, true)
		check(p.XTestImports, p.XTestGoFiles, true)
	}
	return out
}

// Dependencies point one way (docs/architecture.md, "Package map"): every import of
// ours, in code and in tests, is allowed by the table above.
func TestImportsPointOneWay(t *testing.T) {
	pkgs := listPackages(t)
	for _, v := range violations(pkgs) {
		t.Error(v)
	}
	for _, p := range pkgs {
		if p.Error != nil {
			t.Errorf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
	}
	// Every group of the table still exists: a renamed directory must not leave a rule
	// that guards nothing.
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[groupOf(p.ImportPath)] = true
	}
	for _, r := range rules {
		if !seen[r.group] {
			t.Errorf("the layering table has a rule for %s, but the module has no package there", r.group)
		}
	}
}

// The check itself catches a back edge, in code and in tests, and names the file.
func TestViolationsNamesTheOffendingImport(t *testing.T) {
	pkgs := []pkg{
		{ImportPath: module + "/jobs/journal", Imports: []string{module + "/jobs", module + "/actors", "go.etcd.io/bbolt"}},
		{ImportPath: module + "/drivers/serial", XTestImports: []string{module + "/actors/driver"}},
		{ImportPath: module + "/drivers/serial", Imports: []string{module + "/actors/driver"}},
		{ImportPath: module + "/supervisor", TestImports: []string{module + "/client"}},
		{ImportPath: module + "/supervisor", Imports: []string{module + "/client", module + "/coordinator"}},
		{ImportPath: module + "/gadgets"},
	}
	got := violations(pkgs)
	want := []string{
		"jobs/journal imports actors: jobs code may import only jobs, diskspace. Why: jobs is",
		"drivers/serial imports actors/driver: drivers code may import only drivers, diskspace",
		"supervisor imports client: supervisor code may import only supervisor, actors, connector",
		"supervisor imports coordinator: supervisor code",
		"package " + module + "/gadgets is in no group",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d violations, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("violation %d:\n got %s\nwant %s...", i, got[i], want[i])
		}
	}
}
