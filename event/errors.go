package event

import (
	"context"
	"errors"
	"fmt"
)

// Kind is the kind of an error the service gives a client. Every package
// that refuses a request says which kind of refusal it is, with an *Error or
// by wrapping one of the sentinels below; the HTTP layer maps kinds to
// statuses in one place (api's statusOf).
type Kind uint8

// The kinds of error.
const (
	// Internal is a bug or an unexpected failure (HTTP 500). An error of no
	// other kind is Internal; its text is logged, never shown to clients.
	Internal Kind = iota
	// Invalid is a malformed request: bad JSON, a bad parameter or cursor (400).
	Invalid
	// InvalidEvents is a well-formed request whose events fail validation
	// (422); Error.Problems says which.
	InvalidEvents
	// TooLarge is a body or batch over a limit (413).
	TooLarge
	// UnsupportedMediaType is a body in a content coding the service does
	// not decode (415).
	UnsupportedMediaType
	// Timeout is a body that did not arrive in time (408).
	Timeout
	// Unauthorized is a request without a known credential (401).
	Unauthorized
	// Forbidden is a known credential without the needed scope (403).
	Forbidden
	// NotFound is an unknown route or object (404).
	NotFound
	// MethodNotAllowed is a known route asked with the wrong method (405).
	MethodNotAllowed
	// Conflict is a request that contradicts the state it would change,
	// e.g. creating an object that exists with other settings (409).
	Conflict
	// Overloaded is a refusal because a bound is passed: consumer lag, log
	// size, requests in flight. Nothing was done; retry later (429).
	Overloaded
	// Unavailable is a refusal because the service cannot serve the request
	// for now: the disk is full, the index is opening, shutting down.
	// Nothing was done; retry later (503).
	Unavailable
)

// Problem is one problem of a rejected request: the index of the event in
// the batch (0 for a single event; the count of non-blank lines before it
// for NDJSON), the field, and what is wrong. Field is "" when the whole event
// is wrong.
type Problem struct {
	Index   int    `json:"index"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error is an error of a Kind, with the message a client is shown.
type Error struct {
	Kind     Kind
	Message  string
	Problems []Problem // for InvalidEvents
	Err      error     // the cause, if any (not shown to clients)
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// PublicMessage returns the text of err that a client may be shown: err's
// text, except that when err wraps an *Error with a cause (Err), only that
// Error's Message. A cause may name server paths and other internals (an
// *fs.PathError from a full disk); it is for the logs.
func PublicMessage(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Err != nil {
		return e.Message
	}
	return err.Error()
}

// Errorf returns an *Error of kind k with a formatted message.
func Errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// Sentinels that lower layers wrap (with %w) to give an error its kind.
var (
	// ErrBadCursor is returned (wrapped) when a ListQuery's Cursor was not
	// made by the index for the same query.
	ErrBadCursor = &Error{Kind: Invalid, Message: "bad cursor"}
	// ErrOverloaded is returned (wrapped) when publishing is refused because
	// a bound (consumer lag, log size, requests in flight) is passed.
	ErrOverloaded = &Error{Kind: Overloaded, Message: "overloaded"}
	// ErrUnavailable is returned (wrapped) when a request cannot be served
	// for now: the log cannot write, the index is opening or closed.
	ErrUnavailable = &Error{Kind: Unavailable, Message: "unavailable"}
	// ErrNotFound is returned (wrapped) for an object that does not exist.
	ErrNotFound = &Error{Kind: NotFound, Message: "not found"}
)

// KindOf returns the kind of err: that of the first *Error in its chain;
// Unavailable for a cancelled or timed-out context (the client went away or
// the server is shutting down; nothing was acknowledged); else Internal.
func KindOf(err error) Kind {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Kind
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Unavailable
	}
	return Internal
}
