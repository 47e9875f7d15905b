package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// errorBody is the JSON body of every error reply.
type errorBody struct {
	Error   string          `json:"error"`
	Details []event.Problem `json:"details"`
}

// StatusOf maps an error to its HTTP status, by its kind (event.KindOf). It
// is the one place where errors meet statuses.
func StatusOf(err error) int {
	switch event.KindOf(err) {
	case event.Invalid:
		return http.StatusBadRequest
	case event.InvalidEvents:
		return http.StatusUnprocessableEntity
	case event.TooLarge:
		return http.StatusRequestEntityTooLarge
	case event.UnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case event.Timeout:
		return http.StatusRequestTimeout
	case event.Unauthorized:
		return http.StatusUnauthorized
	case event.Forbidden:
		return http.StatusForbidden
	case event.NotFound:
		return http.StatusNotFound
	case event.MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case event.Conflict:
		return http.StatusConflict
	case event.Overloaded:
		return http.StatusTooManyRequests
	case event.Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

func badRequest(msg string) *event.Error { return &event.Error{Kind: event.Invalid, Message: msg} }

// fail writes the reply for err: its status, its public message
// (event.PublicMessage: never a cause such as an I/O error naming a server
// path, and nothing at all for a server error, whose text is logged here,
// once) and, for a refused credential, the challenge. Refusals are logged,
// with the whole error, at most once a second.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusOf(err)
	msg := event.PublicMessage(err)
	var details []event.Problem
	var e *event.Error
	if errors.As(err, &e) {
		details = e.Problems
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", strconv.Itoa(int((h.opts.RetryAfter+time.Second-1)/time.Second)))
		// A full disk refuses every request: log one line per second, with
		// the count of the ones not logged.
		if ok, skipped := h.refusals.allow(time.Now()); ok {
			h.logger.Warn("request refused", "method", r.Method, "path", r.URL.Path, "status", status,
				"err", err, "refusals_not_logged", skipped)
		}
	case http.StatusUnauthorized, http.StatusForbidden:
		var ae *authError
		if errors.As(err, &ae) {
			w.Header().Set("WWW-Authenticate", ae.challenge)
		}
		if ok, skipped := h.denials.allow(time.Now()); ok {
			// RemoteAddr is the peer; X-Forwarded-For is not trusted for anything.
			h.logger.Warn("request refused", "method", r.Method, "path", r.URL.Path, "status", status,
				"remote", r.RemoteAddr, "reason", msg, "refusals_not_logged", skipped)
		}
	case http.StatusInternalServerError:
		h.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error"
	}
	writeError(w, status, msg, details)
}

// throttle lets one event through per second and counts the others.
type throttle struct {
	next    atomic.Int64 // unix nanoseconds before which events are counted, not let through
	skipped atomic.Int64
}

// allow reports whether the event at now may be logged, and how many were
// held back since the last one that was.
func (t *throttle) allow(now time.Time) (bool, int64) {
	n := t.next.Load()
	if now.UnixNano() < n || !t.next.CompareAndSwap(n, now.Add(time.Second).UnixNano()) {
		t.skipped.Add(1)
		return false, 0
	}
	return true, t.skipped.Swap(0)
}

func writeError(w http.ResponseWriter, status int, msg string, details []event.Problem) {
	if details == nil {
		details = []event.Problem{}
	}
	writeJSON(w, status, errorBody{Error: msg, Details: details})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"internal error: encode reply","details":[]}`)
	}
	writeBody(w, status, append(b, '\n'))
}

// jsonContentType is the Content-Type header value of every reply; it is
// never modified.
var jsonContentType = []string{"application/json"}

func writeBody(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	if len(b) > 2048 {
		// Smaller bodies get their Content-Length from net/http, which
		// buffers them whole.
		h.Set("Content-Length", strconv.Itoa(len(b)))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
