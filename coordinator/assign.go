package coordinator

// matcher tells which boards a lease may go to: one board by name, or the boards a
// selector matches.
type matcher struct {
	board string
	sel   Selector
}

func leaseMatcher(l *leaseRow) (matcher, error) {
	if l.WantBoard != "" {
		return matcher{board: l.WantBoard}, nil
	}
	sel, err := ParseSelector(l.Selector)
	return matcher{sel: sel}, err
}

func (m matcher) matches(b *boardRow) bool {
	if m.board != "" {
		return b.Name == m.board
	}
	return m.sel.Matches(b.Labels)
}
