package main

import (
	"io"
	"net/http"
	"time"
)

// replyDeadline gives the reply to a request with a body the whole write
// timeout from the end of the body, instead of from the end of the headers.
//
// http.Server starts WriteTimeout when it has read a request's headers, and
// ReadTimeout when it starts reading the request. A body that arrives
// slowly therefore eats the reply's time: with equal timeouts, a body cut by
// the read timeout leaves next to nothing to write its 408, and with a
// write timeout shorter than the read timeout, a slow body that does arrive
// in time cannot get its 200 out. Here each read of the body moves the write
// deadline to timeout after it (at most every timeout/4, and always at the
// end of the body or on a read error, such as the read timeout): the reply
// gets at least three quarters of the write timeout after the last byte
// read, and the whole of it after a complete body or a timed-out one.
func replyDeadline(h http.Handler, timeout time.Duration) http.Handler {
	if timeout <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &deadlineBody{ReadCloser: r.Body, w: w, timeout: timeout, next: time.Now().Add(timeout / 4)}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody is a request body that extends the write deadline of its
// reply as it is read (see replyDeadline).
type deadlineBody struct {
	io.ReadCloser
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	next    time.Time // no extension before, unless the body ends
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if now := time.Now(); err != nil || !now.Before(b.next) {
		if b.rc == nil {
			b.rc = http.NewResponseController(b.w)
		}
		// ErrNotSupported (a writer without deadlines) leaves the server's.
		_ = b.rc.SetWriteDeadline(now.Add(b.timeout))
		b.next = now.Add(b.timeout / 4)
	}
	return n, err
}
