package config

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// Credential is a runAs resolved to numeric ids: what a board's hooks run as.
type Credential struct {
	// User is the name given in the config (a name or a uid), for messages.
	User     string
	UID, GID uint32
	Groups   []uint32
}

// resolve looks the runAs's names up (the system's user and group databases) and
// returns its ids, or an error naming the field at fault (relative to the runAs).
func (r *RunAs) resolve() (*Credential, string, error) {
	if r.User == "" {
		return nil, "user", errors.New("required (a user name or a numeric uid)")
	}
	c := &Credential{User: r.User}
	primary := ""
	if u, err := user.Lookup(r.User); err == nil {
		primary = u.Gid
		c.UID = parseID(u.Uid)
	} else if n, perr := strconv.ParseUint(r.User, 10, 32); perr == nil {
		c.UID = uint32(n)
		if u, err := user.LookupId(r.User); err == nil {
			primary = u.Gid
		}
	} else {
		return nil, "user", fmt.Errorf("no user %q on this host", r.User)
	}
	switch {
	case r.Group != "":
		g, err := lookupGroup(r.Group)
		if err != nil {
			return nil, "group", err
		}
		c.GID = g
	case primary != "":
		c.GID = parseID(primary)
	default:
		return nil, "group", fmt.Errorf("required: uid %s has no entry in the user database to take its group from", r.User)
	}
	for i, name := range r.Groups {
		g, err := lookupGroup(name)
		if err != nil {
			return nil, fmt.Sprintf("groups[%d]", i), err
		}
		c.Groups = append(c.Groups, g)
	}
	return c, "", nil
}

func lookupGroup(name string) (uint32, error) {
	if g, err := user.LookupGroup(name); err == nil {
		return parseID(g.Gid), nil
	}
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(n), nil
	}
	return 0, fmt.Errorf("no group %q on this host", name)
}

func parseID(s string) uint32 {
	n, _ := strconv.ParseUint(s, 10, 32)
	return uint32(n)
}

// checkRunAs validates a runAs block at rel in scope s.
func checkRunAs(s scope, rel string, r *RunAs) {
	if r == nil {
		return
	}
	if _, field, err := r.resolve(); err != nil {
		s.add(rel+"."+field, "%v", err)
	}
}

// CheckHookPrivileges checks, for a daemon running with effective uid euid, that no
// hook runs with privileges it was not given: a root daemon refuses to run hooks of
// boards without runAs unless runAsRoot is set; a runAs that names another user
// needs a root daemon; and the coordinator token file must not be readable by the
// user a hook runs as. The daemon calls it at start-up; the error is one sentence
// naming the key to set.
func (c *Config) CheckHookPrivileges(euid int) error {
	var root []string
	for _, b := range c.Resolve() {
		if b.Before == nil && b.After == nil {
			continue // no hook runs on this board
		}
		if b.RunAs == nil {
			root = append(root, b.Name)
			continue
		}
		if euid != 0 && b.RunAs.UID != uint32(euid) {
			return fmt.Errorf("%s: board %q: hooks are to run as user %s (uid %d), but the daemon runs as uid %d and cannot switch users: run it as root, or remove runAs",
				c.Path, b.Name, b.RunAs.User, b.RunAs.UID, euid)
		}
		if co := c.Coordinator; co != nil && co.TokenFile != "" && readableBy(co.TokenFile, b.RunAs) {
			return fmt.Errorf("%s: coordinator.tokenFile %s is readable by user %s, whom the hooks of board %q run as: make it readable by the daemon's user alone (chmod 600)",
				c.Path, co.TokenFile, b.RunAs.User, b.Name)
		}
	}
	if euid == 0 && len(root) > 0 && !c.RunAsRoot {
		return fmt.Errorf("%s: the hooks of %s would run as root: set defaults.runAs (for example runAs: {user: nobody}) to run them as an unprivileged user, or runAsRoot: true to let them run as root",
			c.Path, boardList(root))
	}
	return nil
}

func boardList(names []string) string {
	if len(names) == 1 {
		return fmt.Sprintf("board %q", names[0])
	}
	return fmt.Sprintf("%d boards (%q, ...)", len(names), names[0])
}

// readableBy reports whether the user of cred may read the file at path: every
// directory on the way lets it pass, and the file's mode bits that apply to it allow
// reading.
func readableBy(path string, cred *Credential) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	if cred.UID == 0 {
		return true
	}
	if !dirsPassable(filepath.Dir(path), cred) {
		return false
	}
	m := fi.Mode().Perm()
	switch {
	case st.Uid == cred.UID:
		return m&0o400 != 0
	case st.Gid == cred.GID || slices.Contains(cred.Groups, st.Gid):
		return m&0o040 != 0
	}
	return m&0o004 != 0
}

// dirsPassable reports whether the user of cred may pass through every directory from
// / to dir (the execute bit that applies to it).
func dirsPassable(dir string, cred *Credential) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		m := fi.Mode().Perm()
		var x os.FileMode
		switch {
		case st.Uid == cred.UID:
			x = 0o100
		case st.Gid == cred.GID || slices.Contains(cred.Groups, st.Gid):
			x = 0o010
		default:
			x = 0o001
		}
		if m&x == 0 {
			return false
		}
		if d == "/" || d == "." {
			return true
		}
	}
}
