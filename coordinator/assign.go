package coordinator

import pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"

// matcher tells which boards a lease may go to: one board by name, or the boards a
// selector matches.
type matcher struct {
	board string
	sel   Selector
	image *pb.ImageSpecification // nil: none (images.go)
}

func leaseMatcher(l *leaseRow) (matcher, error) {
	if l.WantBoard != "" {
		return matcher{board: l.WantBoard, image: l.Image}, nil
	}
	sel, err := ParseSelector(l.Selector)
	return matcher{sel: sel, image: l.Image}, err
}

func (m matcher) matches(b *boardRow) bool {
	if !imageFits(m.image, b.Labels) {
		return false
	}
	if m.board != "" {
		return b.Name == m.board
	}
	return m.sel.Matches(b.Labels)
}
