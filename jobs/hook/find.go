package hook

import (
	"bytes"
	"os"
	"strconv"
)

// FindShim looks for a live shim serving the spool directory dir (its command line names
// it after --dir), and returns its pid and start time. A daemon killed between starting
// a shim and recording its pid finds it again this way: dir is unique to one lease's
// hook, so no other process can match.
func FindShim(dir string) (pid int, startTime uint64, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, false
	}
	want := []byte("\x00--dir\x00" + dir + "\x00")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		st, err := readStat(p)
		if err != nil || st.dead() {
			continue
		}
		return p, st.startTime, true
	}
	return 0, 0, false
}
