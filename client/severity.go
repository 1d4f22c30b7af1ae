package client

// DisplaySeverity is how boardvisor shows a log line's severity: with the word of the
// hook's prefix (JMP_WARN: shows as WARN). The wire carries upstream Jumpstarter's
// level names (WARNING), which upstream's client understands.
func DisplaySeverity(sev string) string {
	if sev == "WARNING" {
		return "WARN"
	}
	return sev
}
