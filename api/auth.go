package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// Tokens are the bearer tokens of the API. An empty field is no token.
//
// A scope (publishing, reading) is protected as soon as a token that grants
// it is configured: Publish or Admin for POST /publish, Read or Admin for GET
// /events, GET /stats and GET /metrics (the last one unless
// Options.MetricsOpen). A scope with no such token is open. The admin scope
// (retention settings, backups) is protected as soon as any token is
// configured, and only the Admin token grants it: with tokens set but no
// Admin token, nobody gets it. /healthz and /readyz are always open.
type Tokens struct {
	Publish string // POST /publish
	Read    string // GET /events, /stats, /metrics
	Admin   string // everything, the admin routes included
}

// MinTokenBytes is the shortest token Tokens.Validate accepts.
const MinTokenBytes = 16

// Validate checks that each token set is at least MinTokenBytes long, made of
// the characters a bearer token may hold (RFC 6750 b64token: letters, digits
// and -._~+/=), and that no two are the same.
func (t Tokens) Validate() error {
	var errs []error
	seen := map[string]string{}
	for _, tok := range []struct{ name, v string }{{"publish", t.Publish}, {"read", t.Read}, {"admin", t.Admin}} {
		if tok.v == "" {
			continue
		}
		if len(tok.v) < MinTokenBytes {
			errs = append(errs, fmt.Errorf("%s token: shorter than %d bytes", tok.name, MinTokenBytes))
		}
		if !isB64Token(tok.v) {
			errs = append(errs, fmt.Errorf("%s token: only letters, digits and -._~+/= are allowed", tok.name))
		}
		if other, ok := seen[tok.v]; ok {
			errs = append(errs, fmt.Errorf("%s token: same as the %s token", tok.name, other))
		}
		seen[tok.v] = tok.name
	}
	return errors.Join(errs...)
}

func isB64Token(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~+/=", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// scope is a set of permissions.
type scope uint8

const (
	scopePublish scope = 1 << iota
	scopeRead
	scopeAdmin
)

func (s scope) String() string {
	switch s {
	case scopePublish:
		return "publish"
	case scopeAdmin:
		return "admin"
	}
	return "read"
}

// credential is one configured token, kept as its SHA-256 digest so that
// every comparison has the same length and takes the same time.
type credential struct {
	digest [sha256.Size]byte
	scopes scope
}

// authorizer checks bearer tokens against the configured ones.
type authorizer struct {
	creds     []credential
	protected scope // scopes that need a token
}

func newAuthorizer(t Tokens) authorizer {
	var a authorizer
	for _, c := range []struct {
		v string
		s scope
	}{{t.Publish, scopePublish}, {t.Read, scopeRead}, {t.Admin, scopePublish | scopeRead | scopeAdmin}} {
		if c.v == "" {
			continue
		}
		a.creds = append(a.creds, credential{digest: sha256.Sum256([]byte(c.v)), scopes: c.s})
		a.protected |= c.s | scopeAdmin // any token protects the admin routes
	}
	return a
}

// authError is a refused credential, of kind event.Unauthorized (none or
// unknown) or event.Forbidden (known, wrong scope), with its challenge.
type authError struct {
	err       *event.Error
	challenge string // WWW-Authenticate value
}

func (e *authError) Error() string { return e.err.Error() }
func (e *authError) Unwrap() error { return e.err }

func refusal(k event.Kind, challenge, msg string) *authError {
	return &authError{err: &event.Error{Kind: k, Message: msg}, challenge: challenge}
}

const realm = `Bearer realm="aggregator"`

// check returns nil when r may use a route of scope need.
func (a *authorizer) check(r *http.Request, need scope) error {
	if a.protected&need == 0 {
		return nil
	}
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	tok = strings.TrimSpace(tok)
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return refusal(event.Unauthorized, realm, "missing bearer token (Authorization: Bearer <token>)")
	}
	d := sha256.Sum256([]byte(tok))
	var granted scope
	for _, c := range a.creds { // every one, whatever matches
		if subtle.ConstantTimeCompare(d[:], c.digest[:]) == 1 {
			granted |= c.scopes
		}
	}
	if granted == 0 {
		return refusal(event.Unauthorized, realm+`, error="invalid_token"`, "invalid bearer token")
	}
	if granted&need == 0 {
		return refusal(event.Forbidden, realm+`, error="insufficient_scope", scope="`+need.String()+`"`,
			"token lacks the "+need.String()+" scope")
	}
	return nil
}

// guard wraps a route of scope need.
func (h *Handler) guard(need scope, next httprouter.Handle) httprouter.Handle {
	if h.auth.protected&need == 0 {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		if err := h.auth.check(r, need); err != nil {
			h.fail(w, r, err)
			return
		}
		next(w, r, ps)
	}
}

// guardHandler is guard for an http.Handler.
func (h *Handler) guardHandler(need scope, next http.Handler) http.Handler {
	if h.auth.protected&need == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.auth.check(r, need); err != nil {
			h.fail(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}
