package config

import (
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func ids(t *testing.T, name, group string) (uint32, uint32) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("no user %s here", name)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Skipf("no group %s here", group)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(g.Gid)
	return uint32(uid), uint32(gid)
}

// runAs names resolve to ids; a board's runAs replaces the default wholesale.
func TestRunAsResolves(t *testing.T) {
	uid, gid := ids(t, "nobody", "nogroup")
	_, dialout := ids(t, "nobody", "dialout")
	e := newEnv(t)
	c, err := e.load(`stateDir: /bv
defaults:
  runAs: {user: nobody, groups: [dialout]}
  hooks:
    beforeLease: {script: "true"}
boards:
  - name: inherits
  - name: own
    runAs: {user: "4242", group: "4343"}
`)
	if err != nil {
		t.Fatal(err)
	}
	rs := c.Resolve()
	want := []*Credential{{User: "nobody", UID: uid, GID: gid, Groups: []uint32{dialout}}, {User: "4242", UID: 4242, GID: 4343}}
	for i, w := range want {
		if !reflect.DeepEqual(rs[i].RunAs, w) {
			t.Errorf("%s: runAs %+v, want %+v", rs[i].Name, rs[i].RunAs, w)
		}
	}
}

func TestRunAsInvalid(t *testing.T) {
	board := "boards:\n  - name: b1\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"no user", "stateDir: /bv\ndefaults:\n  runAs: {group: nogroup}\n" + board,
			`config.yaml:3: defaults.runAs.user: required (a user name or a numeric uid)`},
		{"unknown user", "stateDir: /bv\ndefaults:\n  runAs: {user: no-such-user-here}\n" + board,
			`config.yaml:3: defaults.runAs.user: no user "no-such-user-here" on this host`},
		{"numeric uid without group", "stateDir: /bv\nboards:\n  - name: b1\n    runAs: {user: \"4242\"}\n",
			`config.yaml:4: board "b1": runAs.group: required: uid 4242 has no entry in the user database to take its group from`},
		{"unknown group", "stateDir: /bv\ndefaults:\n  runAs: {user: nobody, groups: [dialout, no-such-group]}\n" + board,
			`config.yaml:3: defaults.runAs.groups[1]: no group "no-such-group" on this host`},
		{"relative cgroup", "stateDir: /bv\nhookCgroup: hooks\n" + board,
			`config.yaml:2: hookCgroup: "hooks" is not an absolute path (want a directory in a cgroup v2 hierarchy)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.load(tc.yaml)
			e.wantOnly(err, tc.want)
		})
	}
}

// A root daemon does not run hooks as root unless told to; a runAs needs a root daemon;
// the token file must be out of the hooks' reach.
func TestCheckHookPrivileges(t *testing.T) {
	ids(t, "nobody", "nogroup")
	open := t.TempDir()
	for _, d := range []string{open, filepath.Dir(open)} { // passable by nobody
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	token := filepath.Join(open, "token")
	if err := os.WriteFile(token, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	const hooks = "defaults:\n  hooks:\n    beforeLease: {script: \"true\"}\n"
	for _, tc := range []struct {
		name, yaml string
		euid       int
		tokenMode  os.FileMode
		want       string
	}{
		{"root without runAs", "stateDir: /bv\n" + hooks + "boards:\n  - name: b1\n", 0, 0o600,
			`the hooks of board "b1" would run as root: set defaults.runAs (for example runAs: {user: nobody}) to run them as an unprivileged user, or runAsRoot: true to let them run as root`},
		{"root, runAsRoot", "stateDir: /bv\nrunAsRoot: true\n" + hooks + "boards:\n  - name: b1\n", 0, 0o600, ""},
		{"root, runAs", "stateDir: /bv\n" + hooks + "  runAs: {user: nobody}\nboards:\n  - name: b1\n", 0, 0o600, ""},
		{"root, no hooks", "stateDir: /bv\nboards:\n  - name: b1\n", 0, 0o600, ""},
		{"root, one board without runAs", "stateDir: /bv\n" + hooks + "boards:\n  - name: b1\n    runAs: {user: nobody}\n  - name: b2\n", 0, 0o600,
			`the hooks of board "b2" would run as root`},
		{"not root, no runAs", "stateDir: /bv\n" + hooks + "boards:\n  - name: b1\n", 1000, 0o600, ""},
		{"not root, runAs another user", "stateDir: /bv\n" + hooks + "  runAs: {user: nobody}\nboards:\n  - name: b1\n", 1000, 0o600,
			`board "b1": hooks are to run as user nobody (uid 65534), but the daemon runs as uid 1000 and cannot switch users: run it as root, or remove runAs`},
		{"token readable by all", "stateDir: /bv\ncoordinator: {address: \"127.0.0.1:1\", tokenFile: " + token + "}\n" + hooks +
			"  runAs: {user: nobody}\nboards:\n  - name: b1\n", 0, 0o644,
			`coordinator.tokenFile ` + token + ` is readable by user nobody, whom the hooks of board "b1" run as: make it readable by the daemon's user alone (chmod 600)`},
		{"token private", "stateDir: /bv\ncoordinator: {address: \"127.0.0.1:1\", tokenFile: " + token + "}\n" + hooks +
			"  runAs: {user: nobody}\nboards:\n  - name: b1\n", 0, 0o600, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.Chmod(token, tc.tokenMode); err != nil {
				t.Fatal(err)
			}
			e := newEnv(t)
			c, err := e.load(tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			err = c.CheckHookPrivileges(tc.euid)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), e.path()+": ")):
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
