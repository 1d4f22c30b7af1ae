package web

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Sessions.
//
// A browser holds nothing but a session cookie: a random session ID (32 bytes). The
// server keeps, per session, the user's client token, so that every call to the
// coordinator carries it and the coordinator's own checks decide (a revoked token ends
// the session at its next call). Sessions survive a restart of the coordinator (a
// browser that reconnects goes on where it was): they are kept in the state directory,
// each under HMAC(sid, "lookup"), its token sealed (AES-GCM) under a key derived from the
// session ID, which only the browser holds. So the file alone gives no token and no
// session, and the cookie alone gives no token. The CSRF token of a session is derived
// from its ID as well.

// sessionFile is the sessions' file in the state directory.
const sessionFile = "web-sessions.json"

// maxSessions bounds the sessions kept (expired ones are dropped first).
const maxSessions = 10000

// session is one logged-in browser.
type session struct {
	lookup  string // hex HMAC(sid, lookup): the key of the store
	token   string // the user's client token, in memory only
	csrf    string
	expires time.Time
	sealed  []byte // the token sealed for the file
}

// sessionRecord is a session as the file keeps it.
type sessionRecord struct {
	ID      string    `json:"id"`
	Sealed  []byte    `json:"sealed"`
	Expires time.Time `json:"expires"`
}

type sessionStore struct {
	path string // "" keeps sessions in memory only
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	byID map[string]*session
	// sealedOnly holds the sessions read from the file, not yet opened by their cookie.
	sealedOnly map[string]sessionRecord
}

func derive(sid []byte, label string) []byte {
	m := hmac.New(sha256.New, sid)
	m.Write([]byte("boardvisor web session " + label))
	return m.Sum(nil)
}

// openSessions reads the sessions file of dir ("" for memory only); expired sessions
// are dropped. A damaged file is moved aside (its sessions are lost: users log in again).
func openSessions(dir string, ttl time.Duration, now func() time.Time) (*sessionStore, []string, error) {
	s := &sessionStore{ttl: ttl, now: now, byID: map[string]*session{}, sealedOnly: map[string]sessionRecord{}}
	if dir == "" {
		return s, nil, nil
	}
	s.path = filepath.Join(dir, sessionFile)
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("dashboard sessions %s: %w", s.path, err)
	}
	var recs []sessionRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		aside := s.path + ".damaged"
		if rerr := os.Rename(s.path, aside); rerr != nil {
			return nil, nil, fmt.Errorf("dashboard sessions %s do not parse (%v) and cannot be moved aside: %w", s.path, err, rerr)
		}
		return s, []string{fmt.Sprintf("dashboard sessions %s did not parse (%v): moved to %s; users log in again", s.path, err, aside)}, nil
	}
	t := now()
	for _, r := range recs {
		if r.Expires.After(t) && len(r.ID) == 64 {
			s.sealedOnly[r.ID] = r
		}
	}
	return s, nil, nil
}

// create makes a session for a token and persists it; the session ID (for the cookie)
// is returned. Nothing is kept if it cannot be persisted.
func (s *sessionStore) create(token string) (sid string, sess *session, err error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", nil, err
	}
	sess = &session{lookup: hex.EncodeToString(derive(raw, "lookup")), token: token,
		csrf: base64.RawURLEncoding.EncodeToString(derive(raw, "csrf")), expires: s.now().Add(s.ttl)}
	sess.sealed, err = seal(derive(raw, "key"), sess.lookup, token)
	if err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	if len(s.byID)+len(s.sealedOnly) >= maxSessions {
		return "", nil, errTooManySessions
	}
	s.byID[sess.lookup] = sess
	if err := s.saveLocked(); err != nil {
		delete(s.byID, sess.lookup)
		return "", nil, err
	}
	return base64.RawURLEncoding.EncodeToString(raw), sess, nil
}

var errTooManySessions = errors.New("too many dashboard sessions are open")

// get returns the live session of a cookie's session ID, or nil.
func (s *sessionStore) get(sid string) *session {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(sid)
	if err != nil || len(raw) != 32 {
		return nil
	}
	id := hex.EncodeToString(derive(raw, "lookup"))
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if sess := s.byID[id]; sess != nil {
		if !sess.expires.After(now) {
			delete(s.byID, id)
			return nil
		}
		return sess
	}
	rec, ok := s.sealedOnly[id]
	if !ok || !rec.Expires.After(now) {
		return nil
	}
	token, err := unseal(derive(raw, "key"), id, rec.Sealed)
	if err != nil {
		return nil
	}
	sess := &session{lookup: id, token: token, csrf: base64.RawURLEncoding.EncodeToString(derive(raw, "csrf")),
		expires: rec.Expires, sealed: rec.Sealed}
	delete(s.sealedOnly, id)
	s.byID[id] = sess
	return sess
}

// end removes a session and persists the change. The session is gone from memory even
// if the file cannot be written (the error says so).
func (s *sessionStore) end(sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, sess.lookup)
	return s.saveLocked()
}

// drop removes a session whose token the coordinator no longer accepts; the file is
// rewritten at the next change (the sealed token is useless by then).
func (s *sessionStore) drop(sess *session) {
	s.mu.Lock()
	delete(s.byID, sess.lookup)
	s.mu.Unlock()
}

func (s *sessionStore) pruneLocked() {
	now := s.now()
	for id, sess := range s.byID {
		if !sess.expires.After(now) {
			delete(s.byID, id)
		}
	}
	for id, r := range s.sealedOnly {
		if !r.Expires.After(now) {
			delete(s.sealedOnly, id)
		}
	}
}

// saveLocked writes every session to the file: a new file, synced, renamed over the
// old one, the directory synced.
func (s *sessionStore) saveLocked() error {
	if s.path == "" {
		return nil
	}
	s.pruneLocked()
	recs := make([]sessionRecord, 0, len(s.byID)+len(s.sealedOnly))
	for _, sess := range s.byID {
		recs = append(recs, sessionRecord{ID: sess.lookup, Sealed: sess.sealed, Expires: sess.expires})
	}
	for _, r := range s.sealedOnly {
		recs = append(recs, r)
	}
	b, err := json.Marshal(recs)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write dashboard sessions: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write dashboard sessions: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

func seal(key []byte, aad, token string) ([]byte, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return g.Seal(nonce, nonce, []byte(token), []byte(aad)), nil
}

func unseal(key []byte, aad string, sealed []byte) (string, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return "", err
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		return "", err
	}
	if len(sealed) < g.NonceSize() {
		return "", errors.New("sealed token too short")
	}
	pt, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], []byte(aad))
	return string(pt), err
}

// csrfOK compares a request's CSRF token with the session's, in constant time.
func (sess *session) csrfOK(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) == 1
}
