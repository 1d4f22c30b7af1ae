package coordinator

import (
	"net/http"
	"strings"
)

// AdminOnly guards an operator's HTTP endpoint (such as Go's profiler on the metrics
// listener): with client authentication on, a request needs the token of an admin
// ("Authorization: Bearer <token>"); others are refused (401 without a token, 403 for a
// user who is not an admin) and audited. Without client authentication it lets every
// request through, like the rest of the coordinator.
func (c *Coordinator) AdminOnly(h http.Handler) http.Handler {
	if c.clientTokens() == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		u, ok := c.clientTokens().lookup(token)
		switch {
		case token == "" || !ok:
			c.auditRefusal(r.RemoteAddr, "", "", "no admin token for "+r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer realm="boardvisor coordinator"`)
			http.Error(w, "an admin's client token is needed: send Authorization: Bearer <token>", http.StatusUnauthorized)
		case !u.Admin:
			c.auditRefusal(u.Name, "", "", "not an admin: "+r.URL.Path)
			http.Error(w, u.Name+" is not an admin", http.StatusForbidden)
		default:
			h.ServeHTTP(w, r)
		}
	})
}
