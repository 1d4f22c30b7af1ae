package tests

// The command line's conventions through the real binary (issue 17 items 3, 5, 7):
// errors as sentences with their exit statuses, -o yaml of every listing, environment
// variables in every --help, completion from the coordinator, config check over every
// mistake the config tests know, the example config starting as it is, the version from
// the build info, the console's banner and raw mode, the lease shell's prompt.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/supervisor/config/configtest"
	"gopkg.in/yaml.v3"
)

func TestErrorsAreSentences(t *testing.T) {
	dir := t.TempDir()
	down := freeAddr(t) // nobody listens there
	coordAddr := freeAddr(t)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("root "+rootToken+" admin\n"), 0o600)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--client-tokens", tokens)
	cases := []struct {
		name  string
		env   []string
		args  []string
		code  int
		wants []string
	}{
		{"coordinator down", coordEnv(down, rootToken), []string{"status"}, 3,
			[]string{"cannot reach the coordinator at " + down + ": connection refused", "BOARDVISOR_COORDINATOR"}},
		{"shell with the coordinator down", coordEnv(down, rootToken), []string{"shell", "-l", "device=rpi4"}, 3,
			[]string{"create lease: cannot reach the coordinator at " + down}},
		{"release without an ID", coordEnv(coordAddr, rootToken), []string{"lease", "release"}, 2,
			[]string{"boardvisor lease release needs a lease ID", "boardvisor lease list shows them"}},
		{"release of no lease", coordEnv(coordAddr, rootToken), []string{"lease", "release", "no-such-lease"}, 5,
			[]string{"release lease no-such-lease: lease no-such-lease not found"}},
		{"a refused token", coordEnv(coordAddr, "tok-forged"), []string{"status"}, 4,
			[]string{"refused the token", "client token not accepted"}},
		{"no token", coordEnv(coordAddr, ""), []string{"lease", "list"}, 4,
			[]string{"no client token", "BOARDVISOR_USER_TOKEN"}},
		{"supervisor down", []string{"BOARDVISOR_EXPORTER=" + down, "BOARDVISOR_BOARD=rpi4-01", "BOARDVISOR_TOKEN=x"}, []string{"power", "cycle"}, 3,
			[]string{"power cycle of board rpi4-01: cannot reach the supervisor of board rpi4-01 at " + down + ": connection refused"}},
		{"no lease", []string{"BOARDVISOR_EXPORTER=", "BOARDVISOR_BOARD=", "BOARDVISOR_TOKEN=", "BOARD_NAME="}, []string{"console"}, 2,
			[]string{"no lease: run this inside `boardvisor shell`"}},
		{"unknown flag", nil, []string{"status", "--frobnicate"}, 2, []string{"unknown flag: --frobnicate", "see boardvisor status --help"}},
		{"unknown output", coordEnv(coordAddr, rootToken), []string{"status", "-o", "xml"}, 2, []string{`unknown output format "xml"`}},
		{"extra argument", nil, []string{"status", "rpi4-01"}, 2, []string{"takes no arguments"}},
		{"unknown command", nil, []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(tc.env, tc.args...)
			if got := exitCode(err); got != tc.code {
				t.Errorf("exit %d, want %d: %q", got, tc.code, out)
			}
			if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
				t.Errorf("%d lines, want one: %q", n+1, out)
			}
			for _, w := range tc.wants {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in %q", w, out)
				}
			}
			for _, raw := range []string{"transport:", "desc =", "rpc error", "accepts 1 arg", "context canceled", "goroutine"} {
				if strings.Contains(out, raw) {
					t.Errorf("raw error text %q in %q", raw, out)
				}
			}
		})
	}
}

// yamlSameAsJSON checks that -o yaml parses back (yaml.v3) to the data -o json prints.
func yamlSameAsJSON(t *testing.T, env []string, args ...string) any {
	t.Helper()
	y, err := cliStdout(env, append(args, "-o", "yaml")...)
	if err != nil {
		t.Fatalf("%v -o yaml: %v", args, err)
	}
	j, err := cliStdout(env, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("%v -o json: %v", args, err)
	}
	var fromYAML, fromJSON any
	if err := yaml.Unmarshal(y, &fromYAML); err != nil {
		t.Fatalf("%v -o yaml does not parse: %v\n%s", args, err, y)
	}
	if err := json.Unmarshal(j, &fromJSON); err != nil {
		t.Fatalf("%v -o json does not parse: %v\n%s", args, err, j)
	}
	// Through JSON again, YAML's timestamps and JSON's strings meet.
	b, err := json.Marshal(fromYAML)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	var again any
	json.Unmarshal(b, &again)
	if !reflect.DeepEqual(again, fromJSON) {
		t.Fatalf("%v: -o yaml and -o json differ:\nyaml:\n%s\njson:\n%s", args, y, j)
	}
	return fromJSON
}

// Every command that lists or shows: -o yaml reads back as what -o json says.
func TestListingsRoundTripThroughYAML(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("root "+rootToken+" admin\nalice "+aliceToken+"\n"), 0o600)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--client-tokens", tokens)
	env := coordEnv(coordAddr, rootToken)
	// An empty list is a list.
	if got := yamlSameAsJSON(t, env, "lease", "list"); !reflect.DeepEqual(got, []any{}) {
		t.Errorf("lease list of nothing: %v, want []", got)
	}
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4, arch: arm64"}, boardSpec{"true", "device: \"yes\""})
	startSupervisor(t, "supervisor", cfg)
	waitBoardsAs(t, leaseClient(t, coordAddr), rootToken, 2)
	if _, err := bvAs(coordAddr, rootToken, "lease", "create", "--board", "rpi4-01"); err != nil {
		t.Fatal(err)
	}
	bvAs(coordAddr, rootToken, "lease", "create", "--board", "rpi4-01", "--detach")
	for _, args := range [][]string{{"status"}, {"lease", "list", "--all"}, {"supervisor", "list"}, {"tokens", "list"},
		{"board", "show", "true"}, {"version"}} {
		got := yamlSameAsJSON(t, env, args...)
		if got == nil {
			t.Errorf("%v: nothing", args)
		}
	}
	rows := yamlSameAsJSON(t, env, "status").([]any)
	if len(rows) != 2 || rows[1].(map[string]any)["labels"].(map[string]any)["device"] != "yes" {
		t.Errorf("status rows: %v", rows)
	}
	// wide adds the labels column.
	out := bv(t, coordAddr, "status", "-o", "wide", "--token", rootToken)
	if !strings.Contains(out, "LABELS") || !strings.Contains(out, "arch=arm64,device=rpi4") {
		t.Errorf("status -o wide:\n%s", out)
	}
}

// flagEnv: a command with the flag must name the variables in its --help.
var flagEnv = map[string][]string{
	"--coordinator": {"BOARDVISOR_COORDINATOR", "BOARDVISOR_USER_TOKEN", "BOARDVISOR_CA_FILE", "BOARDVISOR_CLIENT_CONFIG"},
	"--exporter":    {"BOARDVISOR_EXPORTER", "BOARDVISOR_BOARD", "BOARDVISOR_TOKEN"},
}

// commandEnv: these commands read these variables.
var commandEnv = map[string][]string{
	"boardvisor shell":       {"SHELL"},
	"boardvisor supervise":   {"NOTIFY_SOCKET", "WATCHDOG_USEC"},
	"boardvisor coordinator": {"NOTIFY_SOCKET", "WATCHDOG_USEC"},
}

// commands lists every command path of the binary, from the help of each.
func commands(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	var walk func(path []string)
	walk = func(path []string) {
		help, err := runCLI(nil, append(path, "--help")...)
		if err != nil {
			t.Fatalf("%v --help: %v\n%s", path, err, help)
		}
		out = append(out, path)
		_, rest, ok := strings.Cut(help, "Available Commands:\n")
		if !ok {
			return
		}
		for _, line := range strings.Split(rest, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				break
			}
			if f[0] == "help" {
				continue
			}
			walk(append(append([]string(nil), path...), f[0]))
		}
	}
	walk(nil)
	return out
}

func TestEveryHelpNamesItsEnvironment(t *testing.T) {
	cmds := commands(t)
	if len(cmds) < 25 {
		t.Fatalf("only %d commands found: %v", len(cmds), cmds)
	}
	for _, path := range cmds {
		help, _ := runCLI(nil, append(path, "--help")...)
		name := strings.Join(append([]string{"boardvisor"}, path...), " ")
		if !strings.Contains(help, "\nEnvironment:\n") {
			t.Errorf("%s --help has no Environment section:\n%s", name, help)
			continue
		}
		_, envPart, _ := strings.Cut(help, "\nEnvironment:\n")
		want := commandEnv[name]
		for flag, vars := range flagEnv {
			if strings.Contains(help, "      "+flag+" ") {
				want = append(want, vars...)
			}
		}
		for _, v := range want {
			if !regexp.MustCompile(`(?m)^  ` + v + ` `).MatchString(envPart) {
				t.Errorf("%s --help does not name %s:\n%s", name, v, envPart)
			}
		}
	}
	root, _ := runCLI(nil, "--help")
	if !strings.Contains(root, "Exit status:") || !strings.Contains(root, "130  interrupted") {
		t.Errorf("boardvisor --help does not list the exit statuses:\n%s", root)
	}
}

// Completion asks the coordinator for board names, labels and lease IDs.
func TestCompletionFromTheCoordinator(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4"}, boardSpec{"qemu-01", "device: qemu"})
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 2)
	l, err := createLease(ctxT(t), leases, "", "qemu-01", time.Hour, "alice")
	if err != nil {
		t.Fatal(err)
	}
	env := coordEnv(coordAddr, "")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "shell", "--board", ""}, []string{"rpi4-01\tdevice=rpi4", "qemu-01"}},
		{[]string{"__complete", "shell", "-l", ""}, []string{"device=qemu", "device=rpi4"}},
		{[]string{"__complete", "status", "-l", "arch=x,"}, []string{"arch=x,device=rpi4"}},
		{[]string{"__complete", "lease", "release", ""}, []string{l.GetId() + "\talice qemu-01"}},
		{[]string{"__complete", "board", "clear", ""}, []string{"rpi4-01"}},
		{[]string{"__complete", "supervisor", "drain", ""}, []string{"lab-1"}},
		{[]string{"__complete", "status", "-o", ""}, []string{"table", "wide", "json", "yaml"}},
	} {
		out, err := runCLI(env, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", tc.args, err, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: no %q in\n%s", tc.args, w, out)
			}
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out, err := runCLI(nil, "completion", shell); err != nil || len(out) < 100 {
			t.Errorf("completion %s: %v", shell, err)
		}
	}
}

// `boardvisor config check` finds each mistake the config package's tests know, with
// the same line, and passes the example.
func TestConfigCheckCatchesEveryKnownMistake(t *testing.T) {
	for _, tc := range configtest.Invalid {
		t.Run(tc.Name, func(t *testing.T) {
			dir := t.TempDir()
			for name, f := range configtest.Files {
				p := filepath.Join(dir, name)
				os.WriteFile(p, []byte(f.Content), f.Mode)
				os.Chmod(p, f.Mode)
			}
			path := filepath.Join(dir, "config.yaml")
			os.WriteFile(path, []byte(strings.ReplaceAll(tc.Config, "{{DIR}}", dir)), 0o644)
			out, err := runCLI(nil, "config", "check", path)
			if got := exitCode(err); got != 1 {
				t.Errorf("exit %d, want 1: %q", got, out)
			}
			want := filepath.Join(dir, strings.ReplaceAll(tc.Want, "{{DIR}}", dir))
			if strings.TrimSpace(out) != want {
				t.Errorf("config check said\n  %q\nwant\n  %q", strings.TrimSpace(out), want)
			}
		})
	}
	t.Run("a state directory that cannot be made", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
		path := filepath.Join(dir, "c.yaml")
		os.WriteFile(path, []byte("stateDir: "+dir+"/file/state\nboards: [{name: b1}]\n"), 0o600)
		out, err := runCLI(nil, "config", "check", path)
		if exitCode(err) != 1 || !strings.Contains(out, "stateDir: "+dir+"/file/state cannot be created: "+dir+"/file is not a directory") {
			t.Errorf("%v %q", err, out)
		}
	})
	t.Run("the example", func(t *testing.T) {
		path := exampleConfig(t)
		out, err := runCLI(nil, "config", "check", path)
		if err != nil || !strings.Contains(out, ": good: 2 board(s) (virt-01, virt-02)") {
			t.Errorf("example: %v %q", err, out)
		}
	})
	if out, err := runCLI(nil, "config", "check"); exitCode(err) != 2 || !strings.Contains(out, "needs a config file") {
		t.Errorf("config check without a file: %v %q", err, out)
	}
}

// exampleConfig is supervisor/config/testdata/example.yaml as it is, but for the two
// values a test must change: its state directory and its client port.
func exampleConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../supervisor/config/testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := strings.Replace(string(b), "stateDir: /var/lib/boardvisor", "stateDir: "+filepath.Join(dir, "state"), 1)
	s = strings.Replace(s, "listen: 127.0.0.1:7410", "listen: "+freeAddr(t), 1)
	if s == string(b) {
		t.Fatal("example.yaml's stateDir or listen line moved")
	}
	path := filepath.Join(dir, "example.yaml")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The example config starts as it is: two simulated boards that boot (their consoles
// record a boot log), no warning, a clean stop.
func TestExampleConfigStarts(t *testing.T) {
	path := exampleConfig(t)
	sup := start(t, "supervisor", "supervise", "--config", path)
	sup.waitLine(`"@message":"supervising"`, `"boards":2`) // JSON: not a terminal
	state := filepath.Join(filepath.Dir(path), "state")
	for _, b := range []string{"virt-01", "virt-02"} {
		eventually(t, b+"'s boot log recorded", func() bool {
			var size int64
			filepath.Walk(filepath.Join(state, "console", b), func(_ string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					size += fi.Size()
				}
				return nil
			})
			return size > 100
		})
	}
	sup.terminate()
	if sup.err != nil {
		t.Errorf("exit after SIGTERM: %v", sup.err)
	}
	for _, bad := range []string{"[WARN]", "[ERROR]", `"@level":"warn"`, `"@level":"error"`} {
		if l := sup.findLine(bad); l != "" {
			t.Errorf("the example logs a problem: %s", l)
		}
	}
}

// --version and `version` say the module version and the commit the binary was built
// from.
func TestVersionFromBuildInfo(t *testing.T) {
	out, err := runCLI(nil, "--version")
	if err != nil || !strings.HasPrefix(out, "boardvisor ") || strings.Contains(out, " dev") {
		t.Fatalf("--version: %v %q", err, out)
	}
	var bi map[string]any
	j, err := cliStdout(nil, "version", "-o", "json")
	if err != nil {
		t.Fatalf("version -o json: %v", err)
	}
	if err := json.Unmarshal(j, &bi); err != nil || bi["version"] == "" || bi["go"] == "" {
		t.Fatalf("version -o json: %v %s", err, j)
	}
	head, gerr := exec.Command("git", "rev-parse", "HEAD").Output()
	if gerr != nil {
		t.Skipf("no git here to check the commit: %v", gerr)
	}
	if fi, err := os.Stat("../.git"); err == nil && !fi.IsDir() {
		t.Skip("a git worktree: Go stamps no VCS information in one (make build passes the commit with -ldflags instead)")
	}
	if c, _ := bi["commit"].(string); c != strings.TrimSpace(string(head)) || !strings.Contains(out, c[:12]) {
		t.Errorf("commit %q, want HEAD %s; --version %q", bi["commit"], head, out)
	}
}

// `boardvisor console` on a terminal: a banner with the way out, no local echo (a
// password typed at the board's prompt never shows), and Ctrl+] leaves.
func TestConsoleBannerAndNoLocalEcho(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, virtual: true, boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + coordAddr}, "shell", "--board", "virt-01", "--", binary, "console")
	term.expect("Console of board virt-01: what you type goes to the board (no local echo). Ctrl+] leaves.")
	// Enter at the login prompt until the board answers with a new one (what is typed
	// while it boots is lost, as on a real board).
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for prompt := false; !prompt; {
		select {
		case l := <-term.seen:
			prompt = strings.HasSuffix(l, "virt-01 login: ")
		case <-tick.C:
			term.send("\r")
		case <-deadline:
			t.Fatal("the board never showed its login prompt")
		}
	}
	term.send("root\r")
	term.send("hunter2-secret\r")
	term.send("echo done    marker\r") // the board answers "done marker"
	var seen []string
	seen = append(seen, term.expect("done marker")...)
	term.send("\x1d")
	seen = append(seen, term.expect("Left the console of board virt-01.")...)
	seen = append(seen, term.expect("Releasing lease...")...)
	for _, l := range seen {
		if strings.Contains(l, "hunter2") {
			t.Fatalf("the password typed showed on the terminal: %q", l)
		}
	}
	if code := term.exitStatus(); code != 0 {
		t.Errorf("exit %d after leaving the console, want 0", code)
	}
}

// The lease's interactive shell shows the board in its prompt.
func TestShellPromptNamesTheBoard(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + coordAddr, "SHELL=/bin/sh", "PS1=board$ "}, "shell", "-l", "device=rpi4")
	term.expect("Connected to device.")
	term.send("echo \"prompt=$PS1.\"\n")
	if line := term.expectContaining("prompt=["); !strings.HasSuffix(line, "prompt=[rpi4-01] board$ .") {
		t.Errorf("prompt %q, want it marked with [rpi4-01]", line)
	}
	term.send("exit\n")
	term.expect("Releasing lease...")
	term.exitStatus()
}

// The client config file (XDG) gives the coordinator, the token and the CA; flags and
// the environment win over it; TLS mistakes are said in words.
func TestClientConfigFileAndTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("root "+rootToken+" admin\n"), 0o600)
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--client-tokens", tokens, "--tls-cert", cert, "--tls-key", key)
	xdg := filepath.Join(dir, "xdg")
	os.MkdirAll(filepath.Join(xdg, "boardvisor"), 0o700)
	cfgPath := filepath.Join(xdg, "boardvisor", "config.yaml")
	writeCfg := func(body string, mode os.FileMode) {
		os.WriteFile(cfgPath, []byte(body), mode)
		os.Chmod(cfgPath, mode)
	}
	// Nothing in the environment: the file says it all.
	env := []string{"XDG_CONFIG_HOME=" + xdg, "BOARDVISOR_COORDINATOR=", "BOARDVISOR_USER_TOKEN=", "BOARDVISOR_CA_FILE=", "BOARDVISOR_CLIENT_CONFIG="}
	writeCfg("coordinator: "+coordAddr+"\ntoken: "+rootToken+"\ncaFile: "+ca+"\n", 0o600)
	if out, err := runCLI(env, "status"); err != nil || !strings.HasPrefix(out, "BOARD") {
		t.Fatalf("status with the client config: %v %q", err, out)
	}
	// A flag wins over the file.
	if out, err := runCLI(env, "status", "--token", "tok-forged"); exitCode(err) != 4 {
		t.Errorf("--token over the file: %v %q", err, out)
	}
	// A token readable by others is refused, with the fix.
	writeCfg("coordinator: "+coordAddr+"\ntoken: "+rootToken+"\ncaFile: "+ca+"\n", 0o644)
	if out, err := runCLI(env, "status"); exitCode(err) != 2 || !strings.Contains(out, "chmod 600 "+cfgPath) {
		t.Errorf("a token others may read: %v %q", err, out)
	}
	// A misspelt key is named.
	writeCfg("coordinatr: x\n", 0o600)
	if out, err := runCLI(env, "status"); exitCode(err) != 2 || !strings.Contains(out, "coordinatr") {
		t.Errorf("a misspelt key: %v %q", err, out)
	}
	// Plaintext to a TLS coordinator, and TLS to a plaintext one.
	writeCfg("coordinator: "+coordAddr+"\ntoken: "+rootToken+"\n", 0o600)
	if out, err := runCLI(env, "status"); exitCode(err) != 3 || !strings.Contains(out, "does it want TLS? then set a CA file") {
		t.Errorf("plaintext to TLS: %v %q", err, out)
	}
	plain := freeAddr(t)
	startCoordinator(t, plain, filepath.Join(dir, "coord2"))
	if out, err := runCLI(env, "status", "--coordinator", plain, "--ca-file", ca); exitCode(err) != 3 || !strings.Contains(out, "does not speak TLS") {
		t.Errorf("TLS to plaintext: %v %q", err, out)
	}
}

// The daemons log text on a terminal (and JSON otherwise: TestExampleConfigStarts).
func TestTextLogsOnATerminal(t *testing.T) {
	term := openTerminal(t, nil, "supervise", "--config", exampleConfig(t))
	line := term.expectContaining("supervising")
	if !strings.Contains(line, "[INFO]") || strings.Contains(line, `"@message"`) {
		t.Errorf("log line on a terminal: %q, want text", line)
	}
	term.cmd.Process.Signal(syscall.SIGTERM)
	term.exitStatus()
}

// `boardvisor demo` prints no path it removes; with --keep it says where its log is,
// and leaves it there.
func TestDemoKeepsItsLogOnlyWhenAsked(t *testing.T) {
	out, err := runCLI(nil, "demo")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	if strings.Contains(out, os.TempDir()) || !strings.Contains(out, "keep it with --keep") {
		t.Errorf("demo names a path it removes, or not how to keep its log:\n%s", out)
	}
	out, err = runCLI(nil, "demo", "--keep")
	if err != nil {
		t.Fatalf("demo --keep: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`kept in (\S+) \(the daemons' log is (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo --keep does not say where:\n%s", out)
	}
	defer os.RemoveAll(m[1])
	if b, err := os.ReadFile(m[2]); err != nil || !strings.Contains(string(b), "supervising") {
		t.Errorf("the kept log %s: %v", m[2], err)
	}
}
