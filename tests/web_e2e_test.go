package tests

// The web dashboard in a real browser: Debian's headless Chromium, driven through the
// DevTools protocol (chromedp), against the real coordinator and supervisor binaries.
// Hooks block on FIFOs until the test has seen in the page what they printed, so every
// assertion is on what a user sees while it is still true.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The users of these tests (the --client-tokens file).
const (
	webTokens   = "alice tok-alice-web\nbob tok-bob-web\nroot tok-root-web admin\n"
	webAliceTok = "tok-alice-web"
	webBobTok   = "tok-bob-web"
	webRootTok  = "tok-root-web"
)

// chromiumPath finds Debian's chromium; without it the test skips, except under CI
// (where .ci/run installs it) where it fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed: .ci/run should have installed Debian's chromium package")
	}
	t.Skip("chromium is not installed (apt-get install chromium): the browser tests need it")
	return ""
}

// browser is one headless Chromium with a fresh profile (its own cookies), and what its
// pages did that a test must know of: dialogs opened, script errors, CSP violations.
type browser struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	// dialogs are the JavaScript dialogs that opened (each is dismissed at once).
	dialogs []string
	// problems are uncaught script errors and Content-Security-Policy violations.
	problems []string
	base     string
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	path := chromiumPath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx, base: base}
	if err := chromedp.Do(ctx); err != nil { // start the browser, without a timeout
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("chromium: enable its log: %v", err)
	}
	dismiss := make(chan struct{}, 16)
	err := chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *page.EventJavascriptDialogOpening:
			b.mu.Lock()
			b.dialogs = append(b.dialogs, string(e.Type)+": "+e.Message)
			b.mu.Unlock()
			select {
			case dismiss <- struct{}{}:
			default:
			}
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += " " + d.Exception.Description
			}
			b.note(fmt.Sprintf("script error at %s:%d: %s", d.URL, d.LineNumber+1, msg))
		case *cdplog.EventEntryAdded:
			if strings.Contains(e.Entry.Text, "Content Security Policy") {
				b.note("CSP violation: " + e.Entry.Text)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-dismiss:
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
			}
		}
	}()
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.problems {
			t.Errorf("the page had a problem: %s", p)
		}
	})
	return b
}

func (b *browser) note(p string) {
	b.mu.Lock()
	b.problems = append(b.problems, p)
	b.mu.Unlock()
}

func (b *browser) dialogsOpened() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.dialogs)
}

// do runs browser actions, bounded by wait.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v\npage text:\n%s", what, err, b.text())
	}
}

// eval evaluates a JavaScript expression in the page and decodes its value into out.
func (b *browser) eval(expr string, out any) error {
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

func (b *browser) mustEval(expr string, out any) {
	b.t.Helper()
	if err := b.eval(expr, out); err != nil {
		b.t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
}

// text is the page's visible text, for failure messages.
func (b *browser) text() string {
	var s string
	if err := b.eval(`document.body ? document.body.innerText : ""`, &s); err != nil {
		return "(no page text: " + err.Error() + ")"
	}
	return s
}

// until waits (bounded by wait) until the JavaScript expression is true in the page.
// The page is checked every 25ms: what it shows is another process's state, and the
// browser gives no event for "this text appeared" that chromedp can await in general.
func (b *browser) until(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var ok bool
		err := b.eval("!!("+expr+")", &ok)
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("browser: timed out after %s waiting for %s (%v; dialogs opened: %q)\npage text:\n%s", wait, what, err, b.dialogsOpened(), b.text())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// login logs in with a client token through the login form and lands on path.
func (b *browser) login(token, path string) {
	b.t.Helper()
	b.do("log in",
		chromedp.Navigate(b.base+path),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Submit(chromedp.ID("token")),
	)
	b.until("the page after the login, with its navigation", `document.querySelector('#nav .user') !== null && location.pathname === `+jsString(path))
}

// screenshot saves the page as name.png in the artifacts directory: $BOARDVISOR_WEB_ARTIFACTS,
// or the test's temporary directory.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	dir := os.Getenv("BOARDVISOR_WEB_ARTIFACTS")
	if dir == "" {
		dir = b.t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// webFarm is a coordinator with its dashboard and client tokens, and one supervisor
// with simulated boards whose hooks are given.
type webFarm struct {
	t                   *testing.T
	dir                 string
	coordAddr, webAddr  string
	coordState, cfgPath string
	coord, sup          *proc
}

func startWebFarm(t *testing.T, before, after string, boards ...boardSpec) *webFarm {
	t.Helper()
	return startWebFarmWith(t, before, after, nil, boards...)
}

// startWebFarmWith is startWebFarm with edit run on the supervisor's config before the
// supervisor starts.
func startWebFarmWith(t *testing.T, before, after string, edit func(cfgPath string), boards ...boardSpec) *webFarm {
	t.Helper()
	chromiumPath(t) // skip before starting anything when there is no browser
	dir := t.TempDir()
	f := &webFarm{t: t, dir: dir, coordAddr: freeAddr(t), webAddr: freeAddr(t), coordState: filepath.Join(dir, "coord")}
	if err := os.WriteFile(filepath.Join(dir, "client-tokens"), []byte(webTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	f.startCoordinator()
	f.cfgPath = labConfig{dir: dir, id: "lab-1", coordAddr: f.coordAddr, before: before, after: after, virtual: true, boards: boards}.write(t)
	// The hooks wait for the test: give them time on a loaded machine.
	for _, h := range []string{before, after} {
		if h != "" {
			editConfig(t, f.cfgPath, "timeout: 20s", "timeout: 180s")
		}
	}
	if edit != nil {
		edit(f.cfgPath)
	}
	f.sup = startSupervisor(t, "supervisor", f.cfgPath)
	waitBoards(t, f.api(webRootTok), len(boards))
	return f
}

func (f *webFarm) startCoordinator() {
	f.coord = startCoordinator(f.t, f.coordAddr, f.coordState, "--client-tokens", filepath.Join(f.dir, "client-tokens"), "--web", f.webAddr)
	f.coord.waitLine("web dashboard")
}

func (f *webFarm) url() string { return "http://" + f.webAddr }

// api is the coordinator's LeaseService for a user.
func (f *webFarm) api(token string) pb.LeaseServiceClient {
	return authedClient{leaseClient(f.t, f.coordAddr), token}
}

// authedClient adds a user's token to every call.
type authedClient struct {
	pb.LeaseServiceClient
	token string
}

func (a authedClient) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+a.token)
}

func (a authedClient) ListBoards(ctx context.Context, in *pb.ListBoardsRequest, _ ...grpc.CallOption) (*pb.ListBoardsResponse, error) {
	return a.LeaseServiceClient.ListBoards(a.ctx(ctx), in)
}

func (a authedClient) CreateLease(ctx context.Context, in *pb.CreateLeaseRequest, _ ...grpc.CallOption) (*pb.CreateLeaseResponse, error) {
	return a.LeaseServiceClient.CreateLease(a.ctx(ctx), in)
}

func (a authedClient) ReleaseLease(ctx context.Context, in *pb.ReleaseLeaseRequest, _ ...grpc.CallOption) (*pb.ReleaseLeaseResponse, error) {
	return a.LeaseServiceClient.ReleaseLease(a.ctx(ctx), in)
}

func (a authedClient) WatchLease(ctx context.Context, in *pb.WatchLeaseRequest, _ ...grpc.CallOption) (pb.LeaseService_WatchLeaseClient, error) {
	return a.LeaseServiceClient.WatchLease(a.ctx(ctx), in)
}

// lease creates a lease of a board for a user and follows it.
func (f *webFarm) lease(token, board string) (*pb.Lease, *leaseWatch) {
	f.t.Helper()
	api := f.api(token)
	r, err := api.CreateLease(ctxT(f.t), &pb.CreateLeaseRequest{Board: board, Duration: durationpb.New(10 * time.Minute)})
	if err != nil {
		f.t.Fatalf("CreateLease: %v", err)
	}
	w, err := watchLease(ctxT(f.t), api, r.GetLease().GetId())
	if err != nil {
		f.t.Fatal(err)
	}
	return r.GetLease(), w
}

// release lets a hook blocked reading the FIFO go on (bounded by wait: the hook must be
// reading it).
func release(t *testing.T, path string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString("go\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("release %s: %v", path, err)
		}
	case <-time.After(wait):
		t.Fatalf("release %s: no hook reads it after %s", path, wait)
	}
}

// statusOf is the JavaScript for a board's status cell on the boards page.
func statusOf(board string) string {
	return `(document.querySelector('tr[data-board=` + jsString(board) + `] .status') || {}).textContent`
}

// The boards page follows a lease without a reload: the board goes AVAILABLE →
// BEFORE_LEASE_HOOK → LEASE_READY → AFTER_LEASE_HOOK → AVAILABLE, each seen while it
// lasts (the hooks wait on FIFOs until the test has seen the status). The supervisors
// page shows the supervisor connected.
func TestWebBoardsPageFollowsALeaseLive(t *testing.T) {
	dir := t.TempDir()
	beforeFIFO, afterFIFO := fifo(t, filepath.Join(dir, "before")), fifo(t, filepath.Join(dir, "after"))
	f := startWebFarm(t,
		`echo "JMP_INFO: flashing"; read x < `+beforeFIFO+`; echo "JMP_INFO: flashed"`,
		`echo "saving logs"; read x < `+afterFIFO+`; echo "saved"`,
		boardSpec{"rpi4-01", "device: rpi4, arch: arm64"}, boardSpec{"rpi4-02", "device: rpi4, arch: arm64"},
		boardSpec{"qemu-x86-01", "device: qemu, arch: x86_64"})
	b := newBrowser(t, f.url())
	b.login(webAliceTok, "/")
	b.until("rpi4-01 AVAILABLE on the boards page", statusOf("rpi4-01")+` === 'AVAILABLE'`)
	// Record every status the page shows for rpi4-01, and mark the page: a reload would
	// lose both.
	b.mustEval(`(() => {
		window.__seen = [];
		const look = () => {
			const s = `+statusOf("rpi4-01")+`;
			if (s && window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
		};
		look();
		new MutationObserver(look).observe(document.querySelector('#boards tbody'), {subtree: true, childList: true, characterData: true});
		return true;
	})()`, nil)

	l, w := f.lease(webAliceTok, "rpi4-01")
	b.until("BEFORE_LEASE_HOOK", statusOf("rpi4-01")+` === 'BEFORE_LEASE_HOOK'`)
	b.until("alice as the holder, linked to her lease",
		`(document.querySelector('tr[data-board="rpi4-01"] .holder a') || {}).textContent === 'alice'`)
	b.until("the lease in her leases", `document.querySelector('#leases tr[data-lease=`+jsString(l.GetId())+`]') !== null`)
	release(t, beforeFIFO)
	b.until("LEASE_READY", statusOf("rpi4-01")+` === 'LEASE_READY'`)
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	b.screenshot("boards")

	if _, err := f.api(webAliceTok).ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	b.until("AFTER_LEASE_HOOK", statusOf("rpi4-01")+` === 'AFTER_LEASE_HOOK'`)
	release(t, afterFIFO)
	b.until("AVAILABLE again", statusOf("rpi4-01")+` === 'AVAILABLE'`)
	if _, err := w.done(); err != nil {
		t.Fatal(err)
	}
	b.until("the ended lease gone from her leases", `document.querySelector('#leases tr[data-lease=`+jsString(l.GetId())+`]') === null`)
	var seen []string
	b.mustEval(`window.__seen`, &seen)
	want := []string{"AVAILABLE", "BEFORE_LEASE_HOOK", "LEASE_READY", "AFTER_LEASE_HOOK", "AVAILABLE"}
	if !slices.Equal(seen, want) {
		t.Fatalf("the boards page showed rpi4-01 as %v, want %v (without a reload)", seen, want)
	}

	// The label filter is in the URL: a link to it shows only the matching boards.
	b.do("open the filtered page", chromedp.Navigate(f.url()+"/?selector=device%3Dqemu"))
	b.until("only the qemu board", `document.querySelectorAll('#boards tbody tr').length === 1 && `+statusOf("qemu-x86-01")+` === 'AVAILABLE'`)
	var sel string
	b.mustEval(`document.getElementById('selector').value`, &sel)
	if sel != "device=qemu" {
		t.Fatalf("the filter box shows %q, want device=qemu", sel)
	}

	b.do("open the supervisors page", chromedp.Navigate(f.url()+"/supervisors"))
	b.until("lab-1 connected, 3 boards", `(() => { const r = document.querySelector('tr[data-supervisor="lab-1"]');
		return r && r.textContent.includes('connected') && r.children[4].textContent === '3'; })()`)
	b.screenshot("supervisors")
	if d := b.dialogsOpened(); len(d) > 0 {
		t.Fatalf("dialogs opened: %v", d)
	}
}

// A lease's page shows its hook lines while the hook still runs (the hook waits on a
// FIFO until the test has seen its line in the page); a line that looks like HTML shows
// as text and runs nothing; a progress line is redrawn in place; the console shows the
// board booting (the hook power-cycles it).
func TestWebLeasePageShowsHookLinesLiveAsText(t *testing.T) {
	dir := t.TempDir()
	gate := fifo(t, filepath.Join(dir, "gate"))
	hostile := `<img src=x onerror=alert(1)>`
	before := `"$BOARDVISOR_CLI" power cycle
echo "JMP_INFO: powering on"
echo '` + hostile + `'
printf 'copy 10%%\rcopy 50%%\r'
read x < ` + gate + `
printf 'copy 100%%\n'
echo "JMP_WARN: USB hub is slow"
echo "JMP_INFO: board ready"`
	f := startWebFarm(t, before, "", boardSpec{"virt-01", "device: virt"})
	b := newBrowser(t, f.url())
	l, w := f.lease(webAliceTok, "virt-01")
	b.login(webAliceTok, "/lease/"+l.GetId())
	lines := `[...document.querySelectorAll('#hooklines li .text')].map((e) => e.textContent)`
	b.until("the hostile line, as text, while the hook waits", lines+`.includes(`+jsString(hostile)+`)`)
	b.until("the progress line at 50%", lines+`.includes('copy 50%')`)
	b.until("the board booting on the console", `document.getElementById('console').textContent.includes('virt-01 login:')`)
	var imgs int
	b.mustEval(`document.querySelectorAll('img').length`, &imgs)
	if imgs != 0 {
		t.Fatalf("the page holds %d <img> elements: a hook line was interpreted as HTML", imgs)
	}
	var phase string
	b.mustEval(`document.getElementById('s-phase').textContent`, &phase)
	if phase != "BEFORE_LEASE" {
		t.Fatalf("the lease shows phase %q while its hook waits, want BEFORE_LEASE", phase)
	}
	b.screenshot("lease")
	release(t, gate)
	b.until("the lease READY", `document.getElementById('s-phase').textContent === 'READY'`)
	b.until("the last hook line", lines+`.includes('board ready')`)
	var got []string
	b.mustEval(lines, &got)
	want := []string{"board virt-01: power cycle", "powering on", hostile, "copy 100%", "USB hub is slow", "board ready"}
	if !slices.Equal(got, want) {
		t.Fatalf("hook lines on the page: %q, want %q (the progress line redrawn in place)", got, want)
	}
	var sev []string
	b.mustEval(`[...document.querySelectorAll('#hooklines li .sev')].map((e) => e.textContent)`, &sev)
	if len(sev) != 6 || sev[4] != "WARN" || sev[1] != "INFO" {
		t.Fatalf("severities on the page: %q", sev)
	}
	// The phase shown (from the lease's state) and the phases list (from its log) come
	// from two messages of the stream: READY can be shown before its log entry is.
	phasesJS := `[...document.querySelectorAll('#phases li')].map((e) => e.dataset.phase)`
	b.until("READY in the phases list", phasesJS+`.includes('READY')`)
	var phases []string
	b.mustEval(phasesJS, &phases)
	if !slices.Equal(phases, []string{"STARTING", "BEFORE_LEASE", "READY"}) {
		t.Fatalf("phases on the page: %v", phases)
	}
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	if d := b.dialogsOpened(); len(d) > 0 {
		t.Fatalf("a dialog opened: %v (a hook line ran as script)", d)
	}
	// bob sees neither the lease's page nor its log.
	bob := newBrowser(t, f.url())
	bob.login(webBobTok, "/lease/"+l.GetId())
	bob.until("bob refused", `document.getElementById('problem').textContent.includes('another user')`)
	var n int
	bob.mustEval(`document.querySelectorAll('#hooklines li').length`, &n)
	if n != 0 {
		t.Fatalf("bob sees %d of alice's hook lines", n)
	}
	// Once the lease is over, its page is its record: phases, lines and the console's
	// recording, read back from the coordinator.
	if _, err := f.api(webAliceTok).ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "seen enough"}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.done(); err != nil {
		t.Fatal(err)
	}
	b.until("the live page saying the lease ended", `!document.getElementById('ended').hidden && document.getElementById('live').textContent === 'ended'`)
	b.do("open the ended lease's page", chromedp.Navigate(f.url()+"/lease/"+l.GetId()))
	b.until("the recording of the console", `document.getElementById('console-title').textContent === 'Console recording' &&
		document.getElementById('console').textContent.includes('virt-01 login:')`)
	b.until("how it ended", `document.getElementById('ended').textContent.includes('Ended DONE') && document.getElementById('ended').textContent.includes('alice')`)
	b.mustEval(lines, &got)
	if !slices.Equal(got, want) {
		t.Fatalf("the ended lease's page shows %q, want %q", got, want)
	}
}

// A browser reading a lease's page while the coordinator is killed and started again
// goes on where it was: every hook line once, in order, none missed, none doubled, and
// the page was not reloaded (its session survived the restart).
func TestWebLeasePageResumesAcrossACoordinatorRestart(t *testing.T) {
	dir := t.TempDir()
	gate1, gate2 := fifo(t, filepath.Join(dir, "gate1")), fifo(t, filepath.Join(dir, "gate2"))
	before := `i=1; while [ $i -le 40 ]; do echo "line $i"; i=$((i+1)); done
read x < ` + gate1 + `
while [ $i -le 80 ]; do echo "line $i"; i=$((i+1)); done
read x < ` + gate2 + `
while [ $i -le 100 ]; do echo "line $i"; i=$((i+1)); done`
	f := startWebFarm(t, before, "", boardSpec{"virt-01", "device: virt"})
	b := newBrowser(t, f.url())
	l, w := f.lease(webAliceTok, "virt-01")
	b.login(webAliceTok, "/lease/"+l.GetId())
	lines := `[...document.querySelectorAll('#hooklines li .text')].map((e) => e.textContent)`
	b.until("line 40", lines+`.includes('line 40')`)
	b.mustEval(`window.__samePage = true`, nil)

	f.coord.kill()
	release(t, gate1) // lines 41-80 wait in the supervisor's outbox
	b.until("the page saying it reconnects", `document.getElementById('live').textContent.includes('reconnecting')`)
	f.startCoordinator()
	b.until("line 80, after the restart", lines+`.includes('line 80')`)
	release(t, gate2)
	b.until("line 100", lines+`.includes('line 100')`)
	b.until("the lease READY", `document.getElementById('s-phase').textContent === 'READY'`)
	var got []string
	b.mustEval(lines, &got)
	var want []string
	for i := 1; i <= 100; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("after the restart the page shows %d lines, want line 1..line 100 once each, in order:\n%q", len(got), got)
	}
	var same bool
	b.mustEval(`window.__samePage === true`, &same)
	if !same {
		t.Fatal("the page was reloaded")
	}
	if _, err := w.ready(); err == nil {
		// The watch began before the restart; its stream ended with the coordinator.
		t.Log("the test's own watch survived the restart")
	}
}

// Only an admin may put a board in maintenance: a user's page does not offer it and the
// endpoint refuses it (audited); an admin's page does it, and the boards page shows it.
func TestWebMaintenanceIsForAdmins(t *testing.T) {
	f := startWebFarm(t, "", "", boardSpec{"rpi4-01", "device: rpi4"}, boardSpec{"rpi4-02", "device: rpi4"})
	bob := newBrowser(t, f.url())
	bob.login(webBobTok, "/")
	bob.until("the boards", statusOf("rpi4-01")+` === 'AVAILABLE'`)
	var offered int
	bob.mustEval(`document.querySelectorAll('button.maint').length + (document.getElementById('actions-head').hidden ? 0 : 1)`, &offered)
	if offered != 0 {
		t.Fatal("bob's boards page offers maintenance")
	}
	// bob asks anyway, from his page, with his session's CSRF token.
	post := func(b *browser, csrf bool) (code int, msg string) {
		var r struct {
			Status int
			Error  string
		}
		hdr := `'X-CSRF-Token': (await (await fetch('/api/me')).json()).csrf`
		if !csrf {
			hdr = `'X-CSRF-Token': 'forged'`
		}
		b.mustEval(`(async () => {
			const r = await fetch('/api/boards/rpi4-01/maintenance', {method: 'POST',
				headers: {'Content-Type': 'application/json', `+hdr+`}, body: JSON.stringify({on: true, reason: 'mine now'})});
			return {status: r.status, error: (await r.json()).error};
		})()`, &r)
		return r.Status, r.Error
	}
	if code, msg := post(bob, true); code != 403 || !strings.Contains(msg, "only an admin") {
		t.Fatalf("bob's maintenance request: %d %q, want 403 only an admin", code, msg)
	}
	root := newBrowser(t, f.url())
	root.login(webRootTok, "/")
	root.until("the boards", statusOf("rpi4-01")+` === 'AVAILABLE'`)
	if code, msg := post(root, false); code != 403 || !strings.Contains(msg, "CSRF") {
		t.Fatalf("a maintenance request without the CSRF token: %d %q, want 403", code, msg)
	}
	health := func(board string) string {
		return `(document.querySelector('tr[data-board=` + jsString(board) + `] .health') || {}).textContent`
	}
	for _, b := range []*browser{bob, root} {
		var h string
		b.mustEval(health("rpi4-01"), &h)
		if h != "GOOD" {
			t.Fatalf("rpi4-01 shows %q after refused requests, want GOOD", h)
		}
	}
	root.do("put rpi4-01 in maintenance",
		chromedp.Click(chromedp.CSS(`tr[data-board="rpi4-01"] button.maint`)),
		chromedp.SendKeys(chromedp.CSS(`tr[data-board="rpi4-01"] input.reason`), "cable swap"),
		chromedp.Click(chromedp.CSS(`tr[data-board="rpi4-01"] button.confirm`)),
	)
	root.until("rpi4-01 in maintenance on root's page", health("rpi4-01")+` === 'MAINTENANCE'`)
	bob.until("rpi4-01 in maintenance on bob's page", health("rpi4-01")+` === 'MAINTENANCE'`)
	root.screenshot("boards-admin")
	r, err := f.api(webRootTok).ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, bd := range r.GetBoards() {
		if want := bd.GetName() == "rpi4-01"; (bd.GetHealth() == pb.BoardHealth_BOARD_HEALTH_MAINTENANCE) != want {
			t.Fatalf("board %s health %s at the coordinator", bd.GetName(), bd.GetHealth())
		}
	}
	audit, _ := os.ReadFile(filepath.Join(f.coordState, "audit.jsonl"))
	for _, want := range []string{`"who":"root (dashboard`, `maintenance on (dashboard): cable swap`,
		`set maintenance from the dashboard: not an admin`, `missing or wrong CSRF token`, `"what":"dashboard login"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("the audit log lacks %q:\n%s", want, audit)
		}
	}
	for _, tok := range []string{webAliceTok, webBobTok, webRootTok} {
		if strings.Contains(string(audit), tok) || strings.Contains(f.coord.output(), tok) {
			t.Fatalf("a client token is in the audit log or the coordinator's output")
		}
	}
}

// healthOf is the JavaScript for a board's health cell on the boards page.
func healthOf(board string) string {
	return `(document.querySelector('tr[data-board=` + jsString(board) + `] .health') || {}).textContent`
}

// Only an admin may clear a quarantine. A board is quarantined for real (its afterLease
// hook fails with onFailure: exit); a user's page offers no clearing and the endpoint
// refuses his request (audited); a request without the session's CSRF token is refused;
// the admin's page offers it on that board only, and after the click the board is
// AVAILABLE again on both pages without a reload, and leasable.
func TestWebClearQuarantineIsForAdmins(t *testing.T) {
	dir := t.TempDir()
	once := filepath.Join(dir, "failed-once")
	after := `[ "$BOARD_NAME" = q-01 ] && [ ! -e ` + once + ` ] && { touch ` + once + `; echo 'JMP_ERROR: the board did not power off'; exit 3; }; true`
	f := startWebFarmWith(t, "", after, func(cfg string) {
		editConfig(t, cfg, "afterLease: {timeout: 180s, onFailure: endLease", "afterLease: {timeout: 180s, onFailure: exit")
	}, boardSpec{"q-01", "device: q"}, boardSpec{"rpi4-01", "device: rpi4"})
	l, w := f.lease(webAliceTok, "q-01")
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api(webAliceTok).ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}

	bob := newBrowser(t, f.url())
	bob.login(webBobTok, "/")
	bob.until("q-01 quarantined on bob's page", healthOf("q-01")+` === 'BAD' && `+statusOf("q-01")+` === 'OFFLINE'`)
	var offered int
	bob.mustEval(`document.querySelectorAll('button.clear-quarantine, td.actions').length + (document.getElementById('actions-head').hidden ? 0 : 1)`, &offered)
	if offered != 0 {
		t.Fatal("bob's boards page offers to clear the quarantine")
	}
	post := func(b *browser, csrf bool) (code int, msg string) {
		var r struct {
			Status int
			Error  string
		}
		hdr := `'X-CSRF-Token': (await (await fetch('/api/me')).json()).csrf`
		if !csrf {
			hdr = `'X-CSRF-Token': 'forged'`
		}
		b.mustEval(`(async () => {
			const r = await fetch('/api/boards/q-01/clear-quarantine', {method: 'POST',
				headers: {'Content-Type': 'application/json', `+hdr+`}, body: JSON.stringify({reason: 'mine now'})});
			return {status: r.status, error: (await r.json()).error};
		})()`, &r)
		return r.Status, r.Error
	}
	if code, msg := post(bob, true); code != 403 || !strings.Contains(msg, "only an admin may clear") {
		t.Fatalf("bob's request to clear the quarantine: %d %q, want 403 only an admin", code, msg)
	}

	root := newBrowser(t, f.url())
	root.login(webRootTok, "/")
	clearBtn := func(board string) string {
		return `document.querySelector('tr[data-board=` + jsString(board) + `] button.clear-quarantine')`
	}
	root.until("q-01 quarantined on root's page, with its button", healthOf("q-01")+` === 'BAD' && `+clearBtn("q-01")+` !== null`)
	if code, msg := post(root, false); code != 403 || !strings.Contains(msg, "CSRF") {
		t.Fatalf("a request to clear the quarantine without the CSRF token: %d %q, want 403", code, msg)
	}
	var others bool
	root.mustEval(healthOf("rpi4-01")+` === 'GOOD' && `+clearBtn("rpi4-01")+` === null && document.querySelectorAll('button.clear-quarantine').length === 1`, &others)
	if !others {
		t.Fatalf("root's page offers to clear the quarantine of a board that has none:\n%s", root.text())
	}
	for _, b := range []*browser{bob, root} {
		var h string
		b.mustEval(healthOf("q-01"), &h)
		if h != "BAD" {
			t.Fatalf("q-01 shows %q after refused requests, want BAD", h)
		}
		b.mustEval(`window.__samePage = true`, nil)
	}
	root.screenshot("boards-quarantined")
	root.do("clear q-01's quarantine",
		chromedp.Click(chromedp.CSS(`tr[data-board="q-01"] button.clear-quarantine`)),
		chromedp.SendKeys(chromedp.CSS(`tr[data-board="q-01"] input.reason`), "power supply replaced"),
		chromedp.Click(chromedp.CSS(`tr[data-board="q-01"] button.confirm`)),
	)
	for _, b := range []*browser{root, bob} {
		b.until("q-01 AVAILABLE and GOOD again, without a reload", statusOf("q-01")+` === 'AVAILABLE' && `+healthOf("q-01")+` === 'GOOD' && window.__samePage === true`)
	}
	root.until("no clearing offered any more", `document.querySelectorAll('button.clear-quarantine').length === 0`)

	// The board is leasable again.
	_, w = f.lease(webAliceTok, "q-01")
	if _, err := w.ready(); err != nil {
		t.Fatalf("a lease of q-01 after its quarantine was cleared: %v", err)
	}
	audit, _ := os.ReadFile(filepath.Join(f.coordState, "audit.jsonl"))
	for _, want := range []string{`"who":"root (dashboard`, `quarantine cleared (dashboard): power supply replaced`,
		`"clear-quarantine"`, `clear quarantine from the dashboard: not an admin`, `missing or wrong CSRF token`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("the audit log lacks %q:\n%s", want, audit)
		}
	}
	if !strings.Contains(f.sup.output(), "quarantine cleared") || !strings.Contains(f.sup.output(), "power supply replaced") {
		t.Errorf("the supervisor does not say who cleared the quarantine, and why:\n%s", f.sup.output())
	}
	if d := append(bob.dialogsOpened(), root.dialogsOpened()...); len(d) > 0 {
		t.Fatalf("dialogs opened: %v", d)
	}
}
