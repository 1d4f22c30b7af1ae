package web

import (
	"context"
	"fmt"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// The shared watcher's read of a 1,000-board farm: what one change costs the
// coordinator while tabs are open (make bench measures it end to end).
func BenchmarkLoadFarm1000(b *testing.B) {
	r := newRig(b, Options{}, false)
	var boards []*pb.BoardInfo
	for i := range 1000 {
		boards = append(boards, board(fmt.Sprintf("b%04d", i), "device", "rpi4", "arch", "arm64"))
	}
	r.supervisor("lab-1", boards...)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		rows, err := r.web.loadFarm(ctx)
		if err != nil || len(rows) != 1000 {
			b.Fatal(len(rows), err)
		}
	}
}
