package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeConsoleStream stands for the exporter's console stream. It is a fake because a
// real gRPC client stream's Send fails with nothing but io.EOF here (the stream's end,
// whose reason Recv gives): a marshalling or client-side size failure cannot be made
// with typed bytes, and the wiring of such a failure is what these tests check. The
// real binary on a real stream is tested in tests/console_client_e2e_test.go
// (TestConsoleFromAPipeGoesOnAfterItsInputUntilTheLeaseEnds,
// TestConsoleThatCannotWriteItsOutputSaysSoAndFails) and tests/conventions_e2e_test.go.
type fakeConsoleStream struct {
	ctx     context.Context
	frames  chan *jpb.StreamResponse // what the board prints; closed: the stream ends (io.EOF)
	sendErr func(n int) error        // the error of the nth send (from 1), nil for none

	mu     sync.Mutex
	sent   []string
	closed chan struct{} // closed by CloseSend; nil: not watched
}

func (f *fakeConsoleStream) Send(r *jpb.StreamRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, string(r.GetPayload()))
	if f.sendErr != nil {
		return f.sendErr(len(f.sent))
	}
	return nil
}

// Recv returns what the board prints until frames is closed, and, as a gRPC stream
// does, a Canceled status once the stream's context ends.
func (f *fakeConsoleStream) Recv() (*jpb.StreamResponse, error) {
	select {
	case r, ok := <-f.frames:
		if !ok {
			return nil, io.EOF
		}
		return r, nil
	case <-f.ctx.Done():
		return nil, status.FromContextError(f.ctx.Err()).Err()
	}
}

func (f *fakeConsoleStream) CloseSend() error {
	if f.closed != nil {
		close(f.closed)
	}
	return nil
}

func (f *fakeConsoleStream) state() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sent...)
}

func data(s string) *jpb.StreamResponse {
	return &jpb.StreamResponse{Payload: []byte(s), FrameType: jpb.FrameType_FRAME_TYPE_DATA}
}

// failingWriter is standard output on a full disk.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) {
	return 0, errors.New("write /dev/stdout: no space left on device")
}

// runFake runs runConsole on f with in as what is typed, bounded by a minute, and
// returns its error and what it wrote.
func runFake(t *testing.T, f *fakeConsoleStream, in io.Reader, raw bool, out io.Writer) error {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	f.ctx = ctx
	done := make(chan error, 1)
	go func() {
		done <- runConsole(ctx, stop, f, in, raw, out, "rpi-1", peer{role: "supervisor", addr: "127.0.0.1:7000", hint: "check that it runs"})
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("boardvisor console did not end within a minute")
		return nil
	}
}

// TestConsoleThatCannotSendWhatIsTypedSaysSoAndFails: a send that fails with anything but
// the stream's end ends `boardvisor console` with one sentence naming the board and what
// failed, and a non-zero exit status, not with the 0 of someone who left. Without the
// sendErr channel in runConsole it returns nil (exit 0): checked.
func TestConsoleThatCannotSendWhatIsTypedSaysSoAndFails(t *testing.T) {
	for _, raw := range []bool{false, true} {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse), sendErr: func(n int) error {
			if n == 2 {
				return status.Error(codes.Internal, "grpc: error while marshaling: proto: invalid UTF-8")
			}
			return nil
		}}
		err := runFake(t, f, iotest.OneByteReader(strings.NewReader("ls\npwd\nuname\n")), raw, io.Discard)
		if err == nil {
			t.Fatalf("raw %v: ended with exit 0 after a failed send", raw)
		}
		if code := exitCodeOf(err); code != exitFailed {
			t.Errorf("raw %v: exit status %d, want %d", raw, code, exitFailed)
		}
		want := "console of board rpi-1: sending what was typed: grpc: error while marshaling: proto: invalid UTF-8"
		if err.Error() != want {
			t.Errorf("raw %v: said %q, want %q", raw, err.Error(), want)
		}
		if sent := f.state(); len(sent) != 2 { // "ls\r", "pwd\r"; raw: "l", "s"
			t.Errorf("raw %v: sent %q: it went on typing after the failed send", raw, sent)
		}
	}
}

// TestConsoleStreamEnds: what the board prints reaches standard output in order; the
// stream's end (io.EOF from a send, then from Recv), the end of the lease, the escape
// key and the end of input each end it as the user expects.
func TestConsoleStreamEnds(t *testing.T) {
	t.Run("the end of input keeps showing the board until the stream ends", func(t *testing.T) {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse), closed: make(chan struct{})}
		var out bytes.Buffer
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		f.ctx = ctx
		done := make(chan error, 1)
		go func() {
			done <- runConsole(ctx, stop, f, strings.NewReader("ls\n"), false, &out, "rpi-1", peer{role: "supervisor", addr: "a"})
		}()
		f.frames <- data("ls\r\n")
		select {
		case <-f.closed: // input has ended: the board is still shown
		case <-time.After(time.Minute):
			t.Fatal("CloseSend was not called at the end of input within a minute")
		}
		f.frames <- data("bin etc\r\n")
		close(f.frames)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ended with %v, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("boardvisor console did not end within a minute of the stream's end")
		}
		if out.String() != "ls\r\nbin etc\r\n" {
			t.Errorf("printed %q", out.String())
		}
		if sent := f.state(); len(sent) != 1 || sent[0] != "ls\r" {
			t.Errorf("sent %q", sent)
		}
	})
	t.Run("a send at the stream's end gives Recv's reason", func(t *testing.T) {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse), sendErr: func(int) error { return io.EOF }}
		f2 := &recvErrStream{fakeConsoleStream: f, err: status.Error(codes.PermissionDenied, "the lease of board rpi-1 ended")}
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		f.ctx = ctx
		err := runConsole(ctx, stop, f2, strings.NewReader("ls\n"), false, io.Discard, "rpi-1", peer{role: "supervisor", addr: "a"})
		if err == nil || err.Error() != "console of board rpi-1: the lease of board rpi-1 ended" || exitCodeOf(err) != exitRefused {
			t.Fatalf("ended with %v (exit %d)", err, exitCodeOf(err))
		}
	})
	t.Run("the lease's end is exit 0", func(t *testing.T) {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse, 2)}
		f.frames <- data("bye\r\n")
		f.frames <- &jpb.StreamResponse{FrameType: jpb.FrameType_FRAME_TYPE_GOAWAY}
		var out bytes.Buffer
		if err := runFake(t, f, idleKeyboard(t), true, &out); err != nil || out.String() != "bye\r\n" {
			t.Fatalf("ended with %v, printed %q", err, out.String())
		}
	})
	t.Run("the escape key is exit 0", func(t *testing.T) {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse)}
		if err := runFake(t, f, strings.NewReader("a\x1d"), true, io.Discard); err != nil {
			t.Fatalf("ended with %v", err)
		}
		if sent := f.state(); len(sent) != 1 || sent[0] != "a" {
			t.Errorf("sent %q", sent)
		}
	})
	t.Run("standard output that fails ends it, non-zero", func(t *testing.T) {
		f := &fakeConsoleStream{frames: make(chan *jpb.StreamResponse, 1)}
		f.frames <- data("U-Boot 2024.01\r\n")
		err := runFake(t, f, idleKeyboard(t), true, failingWriter{})
		if err == nil || exitCodeOf(err) != exitFailed || !strings.Contains(err.Error(), "cannot write what the board prints to standard output (write /dev/stdout: no space left on device)") {
			t.Fatalf("ended with %v (exit %d)", err, exitCodeOf(err))
		}
	})
}

// recvErrStream is a stream whose Recv fails with err: a stream the supervisor ended.
type recvErrStream struct {
	*fakeConsoleStream
	err error
}

func (r *recvErrStream) Recv() (*jpb.StreamResponse, error) { return nil, r.err }

// idleKeyboard is a keyboard nobody types on, until the test ends.
func idleKeyboard(t *testing.T) io.Reader {
	r, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	return r
}
