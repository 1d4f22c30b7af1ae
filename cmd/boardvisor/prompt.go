package main

import (
	"os"
	"path/filepath"
	"strings"
)

// markPrompt marks the prompt of the lease's interactive shell with the board, so that
// a shell with a lease never looks like any other: "[rpi4-01] $ ". For bash, whose
// start-up files set PS1, an rc file sources the user's ~/.bashrc and then adds the
// mark; other shells take PS1 from the environment. It returns the arguments to run,
// the environment to add, and what removes the rc file afterwards.
func markPrompt(args []string, board string) ([]string, []string, func()) {
	mark := "[" + board + "] "
	nothing := func() {}
	ps1 := os.Getenv("PS1")
	if ps1 == "" {
		ps1 = "$ "
	}
	env := []string{"PS1=" + mark + ps1, "BOARDVISOR_PROMPT=" + mark}
	if filepath.Base(args[0]) != "bash" || len(args) > 1 {
		return args, env, nothing
	}
	dir, err := os.MkdirTemp("", "boardvisor-shell-")
	if err != nil {
		return args, env, nothing
	}
	rc := filepath.Join(dir, "bashrc")
	body := `[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"
PS1='` + strings.ReplaceAll(mark, "'", "") + `'"${PS1:-\s-\v\$ }"
`
	if err := os.WriteFile(rc, []byte(body), 0o600); err != nil {
		os.RemoveAll(dir)
		return args, env, nothing
	}
	return []string{args[0], "--rcfile", rc, "-i"}, env[1:], func() { os.RemoveAll(dir) }
}
