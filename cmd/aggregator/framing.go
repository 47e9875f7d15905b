package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
)

// This file refuses ambiguous HTTP/1.x request framing, the ground of
// request smuggling. net/http accepts a request with both Content-Length and
// Transfer-Encoding: chunked by dropping Content-Length (RFC 9112 §6.1), but
// keeps the connection open, and a proxy in front that framed the request by
// its Content-Length then sees a different next request than this server
// does. RFC 9112 §6.3 says to close the connection after such a request; we
// refuse it (400) and close, before net/http reads it.
//
// net/http removes Content-Length from the request it hands to a handler,
// so the check runs on the connection: framingConn holds each request's
// header block back until it is whole and looks for the two headers. When
// both are there it returns only the request line (net/http peeks at a
// kept-alive connection before reading the next request and closes it
// silently if that fails) and then a read error, which net/http answers
// with "400 Bad Request" before closing the connection. To find the next header block it follows the
// framing net/http uses: Content-Length bytes of body, or no body. After a
// chunked request it stops looking, and closeAfterTransferEncoding makes
// that request the connection's last, so no later request goes unchecked.
// With TLS the connection is not wrapped (net/http needs the *tls.Conn for
// HTTP/2); closeAfterTransferEncoding still closes after a chunked request.

// errAmbiguousFraming is the read error that makes net/http answer 400.
var errAmbiguousFraming = errors.New("request framing is ambiguous (Content-Length with Transfer-Encoding, " +
	"Transfer-Encoding in HTTP/1.0, or a folded header): refused")

// framingListener wraps each accepted connection in a framingConn.
type framingListener struct {
	net.Listener
	maxHeader int // header bytes held back at most; past that net/http answers 431
}

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c, maxHeader: l.maxHeader}, nil
}

// framingConn checks the framing of the requests read from it. It is used
// by one reader at a time (net/http's), so it needs no lock.
type framingConn struct {
	net.Conn
	maxHeader int
	buf       []byte // the array pending lives in
	pending   []byte // read from the connection, not yet returned
	cleared   int    // leading bytes of pending that may be returned
	body      int64  // bytes of the current body still to pass (after cleared)
	passing   bool   // no more checks on this connection
	err       error  // the refusal, returned from then on
}

func (c *framingConn) Read(p []byte) (int, error) {
	for {
		switch {
		case c.cleared > 0:
			n := copy(p, c.pending[:c.cleared])
			c.pending = c.pending[n:]
			c.cleared -= n
			return n, nil
		case c.err != nil:
			return 0, c.err // net/http answers 400 and closes
		case c.passing || c.body > 0:
			if len(c.pending) > 0 {
				c.cleared = len(c.pending)
				if !c.passing {
					c.cleared = int(min(int64(len(c.pending)), c.body))
					c.body -= int64(c.cleared)
				}
				continue
			}
			if c.passing {
				return c.Conn.Read(p)
			}
			n, err := c.Conn.Read(p[:min(int64(len(p)), c.body)])
			c.body -= int64(n)
			return n, err
		}
		// A header block: hold it back until it is whole.
		if end := headerEnd(c.pending); end >= 0 {
			c.inspect(c.pending[:end])
			c.cleared = end
			if c.err != nil {
				// Only the request line: net/http peeks at a kept-alive
				// connection before it reads a request, and closes it
				// without a reply when that fails.
				c.cleared = bytes.IndexByte(c.pending, '\n') + 1
			}
			continue
		}
		if len(c.pending) > c.maxHeader {
			c.passing = true // net/http refuses it (431) and closes
			continue
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
}

// fill reads more of the connection into pending, moving pending to the
// front of buf (or a larger buf) first when it has little room left.
func (c *framingConn) fill() error {
	if cap(c.pending)-len(c.pending) < 1024 {
		if cap(c.buf)-len(c.pending) < 1024 {
			c.buf = make([]byte, max(4096, 2*len(c.pending)))
		}
		c.pending = c.buf[:copy(c.buf, c.pending)]
	}
	n, err := c.Conn.Read(c.pending[len(c.pending):cap(c.pending)])
	c.pending = c.pending[:len(c.pending)+n]
	if n > 0 {
		return nil // an error comes back with the next read
	}
	return err
}

// headerEnd returns the length of the header block at the start of b (up
// to and with its blank line; net/http accepts bare LF line ends), or -1.
func headerEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		switch {
		case i+1 < len(b) && b[i+1] == '\n':
			return i + 2
		case i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n':
			return i + 3
		}
	}
	return -1
}

// inspect sets how the bytes after the header block are framed, or the
// refusal.
func (c *framingConn) inspect(block []byte) {
	lines := bytes.Split(block, []byte{'\n'})
	version := lines[0]
	if i := bytes.LastIndexByte(version, ' '); i >= 0 {
		version = bytes.TrimSpace(version[i+1:])
	}
	var hasLength, hasTE, badLength bool
	var length int64
	for _, line := range lines[1:] {
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			c.err = errAmbiguousFraming // obs-fold: RFC 9112 §5.2 allows refusing it
			return
		}
		name, value, _ := bytes.Cut(line, []byte{':'})
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, ok := parseLength(bytes.TrimSpace(value))
			badLength = badLength || !ok || (hasLength && n != length)
			hasLength, length = true, n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			hasTE = true
		}
	}
	switch {
	case hasTE && (hasLength || bytes.Equal(version, []byte("HTTP/1.0"))):
		c.err = errAmbiguousFraming
	case hasTE || badLength:
		// Chunked (the connection closes after it), or a request net/http
		// refuses: stop following the framing.
		c.passing = true
	case hasLength:
		c.body = length
	}
}

// parseLength parses a Content-Length value as net/http does: digits only.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range v {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

// closeAfterTransferEncoding makes a request with a Transfer-Encoding the
// last of its connection (see framingConn).
func closeAfterTransferEncoding(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}
