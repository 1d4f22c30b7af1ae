package connlimit

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestUnauthenticatedConnectionsPerPeer: a peer holds at most MaxPerPeer connections
// before it authenticates (the others are closed at once), an authenticated one frees
// its place, another address is not affected, and an unauthenticated connection is
// closed at its deadline.
func TestUnauthenticatedConnectionsPerPeer(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []string
	lim := &Limiter{MaxPerPeer: 3, Deadline: 500 * time.Millisecond, Refused: func(peer, why string) {
		mu.Lock()
		refused = append(refused, why)
		mu.Unlock()
	}}
	l := lim.Listener(inner)
	defer l.Close()
	accepted := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	var server []net.Conn
	for range 3 {
		dial("127.0.0.2")
		server = append(server, <-accepted)
	}
	fourth := dial("127.0.0.2")
	if !closedByServer(fourth) {
		t.Fatal("a fourth unauthenticated connection from one address stayed open")
	}
	other := dial("127.0.0.3")
	otherServer := <-accepted
	if otherServer.RemoteAddr().String() != other.LocalAddr().String() {
		t.Fatalf("accepted %s, want the other peer %s", otherServer.RemoteAddr(), other.LocalAddr())
	}
	// One authenticates: a new connection is accepted again.
	lim.Authenticated(server[0].RemoteAddr().String())
	dial("127.0.0.2")
	<-accepted
	if n := lim.Unauthenticated("127.0.0.2"); n != 3 {
		t.Fatalf("%d unauthenticated connections counted, want 3", n)
	}
	// The unauthenticated ones are closed at their deadline, not the authenticated one.
	for deadline := time.Now().Add(10 * time.Second); lim.Unauthenticated("127.0.0.2") != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d unauthenticated connections left long after their deadline", lim.Unauthenticated("127.0.0.2"))
		}
	}
	if _, err := server[0].Write([]byte("x")); err != nil {
		t.Fatalf("the authenticated connection was closed: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) < 4 {
		t.Fatalf("refusals reported: %v", refused)
	}
}
