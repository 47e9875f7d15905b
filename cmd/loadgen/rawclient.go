package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// poster sends one pre-built publish body and returns the response status
// and body. Each publisher worker owns one; closeConn releases its connection.
type poster interface {
	post(ctx context.Context, body []byte) (status int, resp []byte, err error)
	closeConn()
}

// stdPoster posts through a shared net/http client.
type stdPoster struct {
	client      *http.Client
	url         string
	contentType string
}

func (s *stdPoster) post(ctx context.Context, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("new request: %w", err)
	}
	req.Header.Set("Content-Type", s.contentType)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("post: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read response: %w", err)
	}
	return resp.StatusCode, b, nil
}

func (s *stdPoster) closeConn() {}

// maxResponse bounds the publish response bodies read.
const maxResponse = 1 << 20

// rawPoster posts over one keep-alive HTTP/1.1 connection of its own: the
// request head and the pre-built body go out in one writev, and the response
// is parsed by net/http's ReadResponse. It avoids the goroutine hand-offs of
// http.Transport, so the loadgen spends less of the shared CPU per request.
type rawPoster struct {
	addr        string // 127.0.0.1:port
	path        string // request target, e.g. /publish
	contentType string
	conn        net.Conn
	br          *bufio.Reader
	stop        func() bool // unregisters the cancellation hook of conn
	head        []byte
}

// errConnClosedByCancel is returned when the run's context ended mid-request.
var errConnClosedByCancel = errors.New("loadgen: request cancelled")

func (r *rawPoster) dial(ctx context.Context) error {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	r.conn = c
	r.br = bufio.NewReaderSize(c, 16<<10)
	// Ending ctx unblocks a read or write in progress.
	r.stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return nil
}

func (r *rawPoster) post(ctx context.Context, body []byte) (int, []byte, error) {
	if r.conn == nil {
		if err := r.dial(ctx); err != nil {
			return 0, nil, err
		}
	}
	if err := r.conn.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		r.closeConn()
		return 0, nil, fmt.Errorf("set deadline: %w", err)
	}
	if ctx.Err() != nil { // the hook may have fired before the deadline was set
		r.closeConn()
		return 0, nil, fmt.Errorf("%w: %w", errConnClosedByCancel, ctx.Err())
	}
	h := append(r.head[:0], "POST "...)
	h = append(h, r.path...)
	h = append(h, " HTTP/1.1\r\nHost: "...)
	h = append(h, r.addr...)
	h = append(h, "\r\nContent-Type: "...)
	h = append(h, r.contentType...)
	h = append(h, "\r\nContent-Length: "...)
	h = strconv.AppendInt(h, int64(len(body)), 10)
	h = append(h, "\r\n\r\n"...)
	r.head = h
	bufs := net.Buffers{h, body}
	if _, err := bufs.WriteTo(r.conn); err != nil {
		r.closeConn()
		return 0, nil, fmt.Errorf("post: %w", err)
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.closeConn()
		return 0, nil, fmt.Errorf("post: read response: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	resp.Body.Close()
	if err != nil {
		r.closeConn()
		return resp.StatusCode, nil, fmt.Errorf("read response: %w", err)
	}
	if resp.Close || resp.ContentLength > maxResponse || resp.ContentLength < 0 && len(b) == maxResponse {
		r.closeConn() // the server closes it, or unread bytes remain
	}
	return resp.StatusCode, b, nil
}

// closeConn drops the connection; the next post dials a new one.
func (r *rawPoster) closeConn() {
	if r.conn == nil {
		return
	}
	r.stop()
	_ = r.conn.Close()
	r.conn, r.br = nil, nil
}
