// Package web is the coordinator's live dashboard: the boards, the leases, the
// supervisors, a lease's phases, hook lines and console, in a browser, pushed as
// server-sent events. It is served by the coordinator's process on its own address
// (`boardvisor coordinator --web ADDR`), from files embedded in the binary.
//
// The dashboard is a client of the coordinator. What a user asks for (a lease, its log,
// maintenance) goes through the LeaseService over an in-process gRPC connection with
// the user's own client token, so the coordinator's access checks decide what the user
// sees and may do. What every tab shows (the farm's boards and leases, the supervisors)
// is read by one watcher per kind of data shared by all open tabs, started with the first
// tab and stopped after the last, and woken by the coordinator's change feed
// (coordinator.WatchFarm): an idle farm, or a farm nobody watches, costs nothing.
//
// Users log in with the same tokens as the command line (--client-tokens). The browser
// keeps only a session cookie (HttpOnly, SameSite=Strict, Secure under TLS); the token
// stays in the coordinator's process (session.go). Every state-changing request carries
// the session's CSRF token and comes from the dashboard's own origin; each is audited.
// Untrusted text (board names, labels, hook lines, console bytes) reaches the page as
// JSON and is only ever set as text (textContent); the Content-Security-Policy allows
// the dashboard's own scripts and styles and nothing inline.
package web

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/boardvisor/boardvisor/coordinator"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

//go:embed assets
var assetFS embed.FS

// Auditor records what users did and what was refused (the coordinator's audit log,
// *audit.Log).
type Auditor interface {
	Refused(who, board, job, reason string)
	Request(who, board, job, what, reason string)
}

// Options configure the dashboard. The zero value of each field but Coordinator selects
// its default.
type Options struct {
	// Coordinator is the coordinator the dashboard shows (required; client
	// authentication must be on: users log in with their client tokens).
	Coordinator *coordinator.Coordinator
	// StateDir keeps the sessions (web-sessions.json), so that they survive a restart.
	// Empty: sessions in memory only.
	StateDir string
	Logger   hclog.Logger
	Audit    Auditor
	// SessionTTL is how long a login lasts (default 12h).
	SessionTTL time.Duration
	// Coalesce is the shortest time between two reads of the farm by its shared watcher
	// (default 250ms); SupervisorsCoalesce that of the supervisors (default 1s: their
	// last contact changes with every batch of events).
	Coalesce, SupervisorsCoalesce time.Duration
	// MaxStreams bounds the event streams open at once (default 2000).
	MaxStreams int
	// Heartbeat is how often an idle stream gets a comment (default 20s).
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a browser (default 30s); a browser that does not
	// read for that long loses its stream (it reconnects and goes on).
	WriteTimeout time.Duration
	// Retry is the reconnection delay a browser is told (default 1s).
	Retry time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the dashboard. Serve Handler() on an HTTP server; Close it after the HTTP
// server.
type Server struct {
	opts     Options
	c        *coordinator.Coordinator
	log      hclog.Logger
	sessions *sessionStore
	farm     *table
	sups     *table
	mux      *http.ServeMux

	grpcSrv *grpc.Server
	conn    *grpc.ClientConn
	api     pb.LeaseServiceClient

	streams atomic.Int64
	logins  loginLimiter
	done    chan struct{}
	once    sync.Once
}

// New makes the dashboard of a coordinator.
func New(opts Options) (*Server, error) {
	if opts.Coordinator == nil {
		return nil, errors.New("web: no coordinator")
	}
	if !opts.Coordinator.ClientAuth() {
		return nil, errors.New("the dashboard needs client tokens (--client-tokens): users log in with them")
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.Coalesce <= 0 {
		opts.Coalesce = 250 * time.Millisecond
	}
	if opts.SupervisorsCoalesce <= 0 {
		opts.SupervisorsCoalesce = time.Second
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 2000
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 20 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.Retry <= 0 {
		opts.Retry = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	sessions, warnings, err := openSessions(opts.StateDir, opts.SessionTTL, opts.Now)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		opts.Logger.Warn(w)
	}
	s := &Server{opts: opts, c: opts.Coordinator, log: opts.Logger, sessions: sessions, done: make(chan struct{})}
	s.logins.now = opts.Now
	s.farm = newTable("boards and leases", opts.Coalesce, s.c.WatchFarm, opts.Logger, s.loadFarm)
	s.sups = newTable("supervisors", opts.SupervisorsCoalesce, s.c.WatchFarm, opts.Logger, s.loadSupervisors)

	// The LeaseService, in process, behind the coordinator's own interceptors (client
	// authentication and its access rules): each user's calls carry the user's token.
	lis := bufconn.Listen(1 << 20)
	s.grpcSrv = grpc.NewServer(s.c.ServerOptions()...)
	pb.RegisterLeaseServiceServer(s.grpcSrv, s.c)
	go func() { _ = s.grpcSrv.Serve(lis) }()
	s.conn, err = grpc.NewClient("passthrough:///dashboard",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.grpcSrv.Stop()
		return nil, fmt.Errorf("web: in-process connection to the coordinator: %w", err)
	}
	s.api = pb.NewLeaseServiceClient(s.conn)
	s.routes()
	return s, nil
}

// Close ends every stream and stops the watchers. Close the HTTP server first.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.farm.close()
		s.sups.close()
		_ = s.conn.Close()
		s.grpcSrv.Stop()
	})
	return nil
}

// Handler serves the dashboard.
func (s *Server) Handler() http.Handler { return s.mux }

func (s *Server) routes() {
	m := http.NewServeMux()
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { s.serveAsset(w, r, name) }
	}
	m.HandleFunc("GET /{$}", page("boards.html"))
	m.HandleFunc("GET /lease/{id}", page("lease.html"))
	m.HandleFunc("GET /supervisors", page("supervisors.html"))
	m.HandleFunc("GET /login", page("login.html"))
	m.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) { s.serveAsset(w, r, r.PathValue("file")) })
	m.HandleFunc("POST /login", s.login)
	m.HandleFunc("POST /logout", s.authed(s.logout))
	m.HandleFunc("GET /api/me", s.authed(s.me))
	m.HandleFunc("GET /api/lease/{id}", s.authed(s.getLease))
	m.HandleFunc("GET /api/events/farm", s.authed(s.farmEvents))
	m.HandleFunc("GET /api/events/supervisors", s.authed(s.supervisorEvents))
	m.HandleFunc("GET /api/events/lease/{id}", s.authed(s.leaseEvents))
	m.HandleFunc("POST /api/boards/{name}/maintenance", s.authed(s.setMaintenance))
	// TODO(web): clear a board's quarantine from the page once the operators'
	// ClearQuarantine RPC is on main (POST /api/boards/{name}/clear-quarantine, admins,
	// CSRF, audited, as maintenance is).
	s.mux = http.NewServeMux()
	s.mux.Handle("/", securityHeaders(m))
}

// csp allows the dashboard's own scripts, styles and connections, nothing inline,
// nothing from elsewhere, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// assetTags are the embedded files' ETags (their SHA-256), computed once.
var assetTags sync.Map

func (s *Server) serveAsset(w http.ResponseWriter, r *http.Request, name string) {
	if name != path.Base(name) || strings.HasPrefix(name, ".") {
		http.NotFound(w, r)
		return
	}
	b, err := fs.ReadFile(assetFS, "assets/"+name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	tag, ok := assetTags.Load(name)
	if !ok {
		sum := sha256.Sum256(b)
		tag = `"` + hex.EncodeToString(sum[:12]) + `"`
		assetTags.Store(name, tag)
	}
	ct := map[string]string{".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
		".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}[path.Ext(name)]
	if ct == "" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("ETag", tag.(string))
	if r.Header.Get("If-None-Match") == tag.(string) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(b)
}

// ---- sessions and access ----

const cookieName = "boardvisor_session"

// caller is an authenticated request's user.
type caller struct {
	sess  *session
	user  coordinator.User
	where string // the browser's address
}

func (c caller) who() string { return c.user.Name + " (dashboard, " + c.where + ")" }

// ctx returns a context whose coordinator calls carry the user's token.
func (c caller) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.sess.token)
}

type authedHandler func(w http.ResponseWriter, r *http.Request, c caller)

// authed requires a live session whose token the coordinator still accepts; a
// state-changing request must also come from the dashboard's origin and carry the
// session's CSRF token.
func (s *Server) authed(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		where := r.RemoteAddr
		ck, err := r.Cookie(cookieName)
		var sess *session
		if err == nil {
			sess = s.sessions.get(ck.Value)
		}
		if sess == nil {
			writeError(w, http.StatusUnauthorized, "you are not logged in (or your session has expired): log in with your client token")
			return
		}
		u, ok := s.c.LookupClientToken(sess.token)
		if !ok {
			s.sessions.drop(sess)
			s.audit().Refused(where, "", "", "dashboard session of a client token the coordinator no longer accepts: ended")
			writeError(w, http.StatusUnauthorized, "your client token is no longer accepted by the coordinator: log in again")
			return
		}
		c := caller{sess: sess, user: u, where: where}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if reason := s.checkOrigin(r); reason != "" {
				s.audit().Refused(c.who(), "", "", "dashboard "+r.Method+" "+r.URL.Path+": "+reason)
				writeError(w, http.StatusForbidden, "request refused: "+reason)
				return
			}
			if !sess.csrfOK(r.Header.Get("X-CSRF-Token")) {
				s.audit().Refused(c.who(), "", "", "dashboard "+r.Method+" "+r.URL.Path+": missing or wrong CSRF token")
				writeError(w, http.StatusForbidden, "request refused: it does not carry this session's CSRF token (reload the page)")
				return
			}
		}
		h(w, r, c)
	}
}

// checkOrigin refuses a state-changing request from another site: the browser says
// where it comes from (Origin, or Sec-Fetch-Site); a request that says neither is not
// from a browser's page of another site.
func (s *Server) checkOrigin(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		if site != "same-origin" && site != "none" {
			return "it comes from another site (" + site + ")"
		}
		return ""
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return "it comes from another origin (" + o + ")"
		}
	}
	return ""
}

type nopAudit struct{}

func (nopAudit) Refused(_, _, _, _ string)    {}
func (nopAudit) Request(_, _, _, _, _ string) {}

func (s *Server) audit() Auditor {
	if s.opts.Audit == nil {
		return nopAudit{}
	}
	return s.opts.Audit
}

// loginLimiter slows down token guessing: past 10 failed logins from one address within
// a minute, that address is refused for the rest of the minute.
type loginLimiter struct {
	now   func() time.Time
	mu    sync.Mutex
	fails map[string]*loginFails
}

type loginFails struct {
	n     int
	since time.Time
}

const (
	maxLoginFails  = 10
	loginFailSpan  = time.Minute
	maxLoginTraced = 4096
)

func (l *loginLimiter) blocked(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fails[addr]
	return f != nil && l.now().Sub(f.since) < loginFailSpan && f.n >= maxLoginFails
}

func (l *loginLimiter) failed(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails == nil || len(l.fails) >= maxLoginTraced {
		l.fails = map[string]*loginFails{} // bounded: forget everyone rather than grow
	}
	f := l.fails[addr]
	if f == nil || l.now().Sub(f.since) >= loginFailSpan {
		f = &loginFails{since: l.now()}
		l.fails[addr] = f
	}
	f.n++
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// login takes the login form (token, next), sets the session cookie and sends the
// browser on to next (a path of the dashboard).
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	where := r.RemoteAddr
	if reason := s.checkOrigin(r); reason != "" {
		s.audit().Refused(where, "", "", "dashboard login: "+reason)
		writeError(w, http.StatusForbidden, "login refused: "+reason)
		return
	}
	if s.logins.blocked(hostOf(where)) {
		s.audit().Refused(where, "", "", "dashboard login: too many failed logins from this address")
		writeError(w, http.StatusTooManyRequests, "too many failed logins from your address: wait a minute and try again")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "the login form could not be read: send token=<your client token>")
		return
	}
	next := localPath(r.PostForm.Get("next"))
	token := strings.TrimSpace(r.PostForm.Get("token"))
	u, ok := s.c.LookupClientToken(token)
	if !ok {
		s.logins.failed(hostOf(where))
		s.audit().Refused(where, "", "", "dashboard login with a client token the coordinator does not know")
		http.Redirect(w, r, "/login?error=token&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	sid, sess, err := s.sessions.create(token)
	if err != nil {
		s.log.Error("dashboard login: the session could not be kept", "user", u.Name, "error", err)
		msg := "the coordinator could not keep your session (" + err.Error() + "): try again, or ask its operator"
		if errors.Is(err, errTooManySessions) {
			msg = "the dashboard has too many open sessions: try again later"
		}
		writeError(w, http.StatusServiceUnavailable, msg)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: sid, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, Expires: sess.expires, MaxAge: int(s.opts.SessionTTL.Seconds())})
	s.audit().Request(u.Name+" (dashboard, "+where+")", "", "", "dashboard login", "")
	s.log.Info("dashboard login", "user", u.Name, "from", where)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// localPath keeps a redirect target on the dashboard: a path, not another site.
func localPath(p string) string {
	if p == "" || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") ||
		strings.ContainsAny(p, "\\\r\n") {
		return "/"
	}
	return p
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, c caller) {
	err := s.sessions.end(c.sess)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	s.audit().Request(c.who(), "", "", "dashboard logout", "")
	if err != nil {
		s.log.Error("dashboard logout: the sessions file could not be written", "user", c.user.Name, "error", err)
		writeError(w, http.StatusServiceUnavailable, "you are logged out of this browser, but the coordinator could not record it ("+
			err.Error()+"); the session also ends by itself at "+c.sess.expires.UTC().Format(time.RFC3339))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (s *Server) me(w http.ResponseWriter, _ *http.Request, c caller) {
	writeJSON(w, http.StatusOK, map[string]any{"user": c.user.Name, "admin": c.user.Admin, "csrf": c.sess.csrf,
		"expires": c.sess.expires.UTC().Format(time.RFC3339)})
}

// ---- JSON answers ----

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// rpcHTTP maps a coordinator error to an HTTP status and a sentence for the user.
func rpcHTTP(err error) (int, string) {
	st := status.Convert(err)
	code := map[codes.Code]int{codes.InvalidArgument: 400, codes.Unauthenticated: 401, codes.PermissionDenied: 403,
		codes.NotFound: 404, codes.FailedPrecondition: 409, codes.ResourceExhausted: 429,
		codes.Unavailable: 503, codes.DeadlineExceeded: 504, codes.Canceled: 499}[st.Code()]
	if code == 0 {
		return http.StatusInternalServerError, "the coordinator failed: " + st.Message()
	}
	return code, st.Message()
}

func (s *Server) rpcError(w http.ResponseWriter, c caller, err error) {
	code, msg := rpcHTTP(err)
	if code == http.StatusUnauthorized {
		s.sessions.drop(c.sess)
	}
	writeError(w, code, msg)
}

// ---- the shared tables ----

func (s *Server) farmEvents(w http.ResponseWriter, r *http.Request, c caller) {
	sel, err := coordinator.ParseSelector(r.URL.Query().Get("selector"))
	if err != nil {
		// As an event, so that the page says it and does not reconnect.
		if out, serr := startSSE(w, s.opts.WriteTimeout, s.opts.Retry); serr == nil {
			b, _ := json.Marshal(map[string]any{"message": "label filter: " + err.Error(), "fatal": true})
			_ = out.write(sseEvent("problem", "", b))
			_ = out.flush()
		}
		return
	}
	u := c.user
	s.serveTable(w, r, s.farm, func(rw *row) bool {
		switch rw.kind {
		case "board":
			return sel.Matches(rw.labels)
		case "lease":
			return u.Admin || rw.client == u.Name
		}
		return false
	})
}

func (s *Server) supervisorEvents(w http.ResponseWriter, r *http.Request, _ caller) {
	s.serveTable(w, r, s.sups, func(*row) bool { return true })
}

// streamSlot takes one of the streams the dashboard serves at once.
func (s *Server) streamSlot(w http.ResponseWriter) bool {
	if s.streams.Add(1) > int64(s.opts.MaxStreams) {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the dashboard serves %d live streams, its limit: try again later", s.opts.MaxStreams))
		return false
	}
	return true
}

// serveTable streams a table to one tab: "reset", the rows its filter keeps, "ready"
// once it has the whole state, then every change. A reconnecting tab starts over with
// "reset" (the rows are state, not a log: nothing to resume).
func (s *Server) serveTable(w http.ResponseWriter, r *http.Request, t *table, filter func(*row) bool) {
	if !s.streamSlot(w) {
		return
	}
	defer s.streams.Add(-1)
	out, err := startSSE(w, s.opts.WriteTimeout, s.opts.Retry)
	if err != nil {
		return
	}
	sub := t.join(filter)
	defer t.leave(sub)
	if out.write(sseEvent("reset", "", []byte("{}"))) != nil {
		return
	}
	hb := time.NewTicker(s.opts.Heartbeat)
	defer hb.Stop()
	ready := false
	for {
		for _, ev := range sub.drain() {
			if out.write(ev) != nil {
				return
			}
		}
		if !ready && t.isLoaded() {
			ready = true
			if out.write(sseEvent("ready", "", []byte("{}"))) != nil {
				return
			}
		}
		if out.flush() != nil {
			return
		}
		select {
		case <-sub.sig:
		case <-hb.C:
			if out.heartbeat() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}

// ---- actions ----

// maxReason bounds an action's reason.
const maxReason = 500

func checkReason(s string) (string, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxReason {
		return "", fmt.Errorf("the reason is %d bytes long; keep it under %d", len(s), maxReason)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return "", errors.New("the reason must be one line of text, without control characters")
		}
	}
	return s, nil
}

// setMaintenance puts a board in or out of maintenance (admins only; the coordinator
// checks again with the user's token).
func (s *Server) setMaintenance(w http.ResponseWriter, r *http.Request, c caller) {
	name := r.PathValue("name")
	var req struct {
		On     bool   `json:"on"`
		Reason string `json:"reason"`
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, `the request could not be read: send {"on": true|false, "reason": "..."}`)
		return
	}
	reason, err := checkReason(req.Reason)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !c.user.Admin {
		s.audit().Refused(c.who(), name, "", "set maintenance from the dashboard: not an admin")
		writeError(w, http.StatusForbidden, "only an admin may put boards in or out of maintenance ("+c.user.Name+" is not one)")
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx(r.Context()), 30*time.Second)
	defer cancel()
	resp, err := s.api.SetBoardMaintenance(ctx, &pb.SetBoardMaintenanceRequest{Board: name, On: req.On, Reason: reason})
	if err != nil {
		_, msg := rpcHTTP(err)
		s.audit().Refused(c.who(), name, "", "set maintenance from the dashboard: "+msg)
		s.rpcError(w, c, err)
		return
	}
	what := "maintenance off"
	if req.On {
		what = "maintenance on"
	}
	s.audit().Request(c.who(), name, "", "SetBoardMaintenance", what+" (dashboard): "+reason)
	s.log.Info("board maintenance set from the dashboard", "board", name, "on", req.On, "user", c.user.Name)
	b := resp.GetBoard()
	writeJSON(w, http.StatusOK, map[string]string{"board": b.GetName(), "health": short(b.GetHealth().String(), "BOARD_HEALTH_")})
}
