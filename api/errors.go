package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// Detail is one problem of a rejected request: the index of the event in the
// batch (0 for a single event; the count of non-blank lines before it for
// NDJSON), the field, and what is wrong. Field is "" when the whole event is
// wrong.
type Detail struct {
	Index   int    `json:"index"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// errorBody is the JSON body of every error reply.
type errorBody struct {
	Error   string   `json:"error"`
	Details []Detail `json:"details"`
}

// requestError is a rejection of the client's request with its status.
type requestError struct {
	status  int
	msg     string
	details []Detail
}

func (e *requestError) Error() string { return e.msg }

func badRequest(msg string) *requestError {
	return &requestError{status: http.StatusBadRequest, msg: msg}
}

// StatusOf maps an error to its HTTP status. It is the one place where
// errors meet statuses.
func StatusOf(err error) int {
	var re *requestError
	switch {
	case errors.As(err, &re):
		return re.status
	case errors.Is(err, event.ErrBadCursor):
		return http.StatusBadRequest
	case errors.Is(err, ErrOverloaded):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client went away or the server is shutting down; nothing was
		// acknowledged.
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// fail writes the reply for err. Server errors are logged here, once.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusOf(err)
	var details []Detail
	msg := err.Error()
	var re *requestError
	if errors.As(err, &re) {
		details = re.details
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", strconv.Itoa(int((h.opts.RetryAfter+time.Second-1)/time.Second)))
		// A full disk refuses every request: log one line per second, with
		// the count of the ones not logged.
		if ok, skipped := h.refusals.allow(time.Now()); ok {
			h.log.Warn("request refused", "method", r.Method, "path", r.URL.Path, "status", status,
				"err", err, "refusals_not_logged", skipped)
		}
	case http.StatusInternalServerError:
		h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
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

func writeError(w http.ResponseWriter, status int, msg string, details []Detail) {
	if details == nil {
		details = []Detail{}
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
