package hook

import (
	"sort"
	"strings"
)

// Env returns the environment variables that tell a hook about its lease: LEASE_NAME,
// CLIENT_NAME, BOARD_NAME, JMP_MOTD_FILE and one BOARD_LABEL_<KEY>=value per board
// label. A label key is upper-cased and every byte other than A-Z, 0-9 and _ becomes _
// (device-type → BOARD_LABEL_DEVICE_TYPE). If two keys map to the same name, the value
// of the key that sorts first is kept. The result is sorted, so it is the same for the
// same input.
func Env(lease, client, board, motdFile string, labels map[string]string) []string {
	env := []string{
		"LEASE_NAME=" + lease,
		"CLIENT_NAME=" + client,
		"BOARD_NAME=" + board,
		"JMP_MOTD_FILE=" + motdFile,
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		name := "BOARD_LABEL_" + EnvName(k)
		if seen[name] {
			continue
		}
		seen[name] = true
		env = append(env, name+"="+labels[k])
	}
	sort.Strings(env)
	return env
}

// EnvName turns a key into an environment variable name: upper case, with every byte
// that is not A-Z, 0-9 or _ replaced by _.
func EnvName(key string) string {
	b := []byte(strings.ToUpper(key))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
