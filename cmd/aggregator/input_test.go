package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/internal/poll"
	"github.com/aggregator-dev/aggregator/wal"
)

// TestHeadersOnlyBodiesHoldLittleMemory opens connections that send only
// the headers of a POST /publish announcing an 8 MiB body: the body buffers
// grow with the bytes that arrive, so the process heap stays far below the
// announced sizes (it was 8 MiB per connection: the buffer was sized from
// Content-Length before a byte of the body arrived).
func TestHeadersOnlyBodiesHoldLittleMemory(t *testing.T) {
	const conns = 100
	ts := startServer(t, t.TempDir(), nil)
	addr := strings.TrimPrefix(ts.base, "http://")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"Content-Length: 8388608\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	// Every request is in its handler, reading its body, once each holds
	// its first buffer.
	held := regexp.MustCompile(`(?m)^aggregator_publish_body_bytes (\S+)$`)
	var last string
	if !poll.Within(30*time.Second, func() bool {
		_, body := ts.do(http.MethodGet, "/metrics", "", nil)
		m := held.FindSubmatch(body)
		if m == nil {
			return false
		}
		last = string(m[1])
		v, _ := strconv.ParseFloat(last, 64)
		return v >= conns*4096
	}) {
		t.Fatalf("the %d requests did not all start reading their bodies: aggregator_publish_body_bytes %s", conns, last)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d connections with 8 MiB announced each: heap grew by %d KiB; body buffers hold %s bytes", conns, grown>>10, last)
	if limit := int64(conns) * 256 << 10; grown > limit { // 1/32 of 8 MiB per connection
		t.Fatalf("heap grew by %d MiB for %d connections that sent no body byte (limit %d MiB)", grown>>20, conns, limit>>20)
	}
}

// TestLoneSurrogateIDsRefused: \ud800 and \udc00 both decode to U+FFFD, so
// the second counted as a duplicate of the first. Both are refused now, and
// ids are compared byte for byte after JSON decoding (NFC é is not NFD é).
func TestLoneSurrogateIDsRefused(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	for _, id := range []string{`\ud800`, `\udc00`} {
		body := `{"topic":"s","event_id":"` + id + `","timestamp":"2025-10-20T00:00:00Z","source":"t"}`
		if status, reply := ts.do(http.MethodPost, "/publish", "application/json", []byte(body)); status != http.StatusUnprocessableEntity {
			t.Fatalf("event_id %s: %d %s, want 422", id, status, reply)
		}
	}
	for _, id := range []string{`\u00e9`, `e\u0301`, `\ud83d\ude00`} {
		body := `{"topic":"s","event_id":"` + id + `","timestamp":"2025-10-20T00:00:00Z","source":"t"}`
		if status, reply := ts.do(http.MethodPost, "/publish", "application/json", []byte(body)); status != http.StatusOK {
			t.Fatalf("event_id %s: %d %s", id, status, reply)
		}
	}
	st := ts.drain(10 * time.Second)
	if st.Received != 3 || st.UniqueProcessed != 3 {
		t.Fatalf("stats %+v: want the 3 valid ids, all unique", st)
	}
}

// TestEventsQueryOverParamLimit: past 10,000 parameters url.ParseQuery
// fails and r.URL.Query() returns nothing, so the topic filter vanished
// and every topic was listed. It is a 400 now, as is any unparsable query.
func TestEventsQueryOverParamLimit(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ts.publish([]any{makeEvent(1, "a"), makeEvent(2, "b")})
	ts.drain(10 * time.Second)
	for _, q := range []string{"topic=a&" + strings.Repeat("x=1&", 10_000), "topic=a&limit=%zz"} {
		status, body := ts.do(http.MethodGet, "/events?"+q, "", nil)
		if status != http.StatusBadRequest || !strings.Contains(string(body), "malformed query") {
			t.Errorf("%.30s...: %d %.200s, want 400", q, status, body)
		}
	}
	if status, body := ts.do(http.MethodGet, "/events?topic=a", "", nil); status != http.StatusOK || strings.Contains(string(body), `"b"`) {
		t.Errorf("topic=a: %d %s", status, body)
	}
}

// rawExchange writes req on a new connection and returns everything the
// server sends until it closes the connection (or 5 s pass: closed is then
// false).
func rawExchange(tb testing.TB, addr, req string) (reply string, closed bool) {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, err := io.ReadAll(c)
	var ne net.Error
	return string(out), !(errors.As(err, &ne) && ne.Timeout())
}

// TestAmbiguousFramingRefused sends requests with both Content-Length and
// Transfer-Encoding: chunked (and their kin) on a raw connection, each
// followed by a smuggled second request: the server answers 400 and closes
// the connection, and never answers the second one. net/http alone framed
// the first by its chunked body, kept the connection open and answered the
// smuggled request.
func TestAmbiguousFramingRefused(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	addr := strings.TrimPrefix(ts.base, "http://")
	event := string(mustJSON(t, makeEvent(1, "smuggle")))
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(event), event)
	smuggled := "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
	for name, head := range map[string]string{
		"length then chunked": "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"chunked then length": "POST /publish HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
		"chunked in HTTP/1.0": "POST /publish HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
		"second request":      "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		reply, closed := rawExchange(t, addr, head+chunked+smuggled)
		answers := strings.Count(reply, "HTTP/1.")
		if !strings.Contains(reply, "HTTP/1.1 400") || !closed || strings.Contains(reply, `"received"`) ||
			(name != "second request" && answers != 1) {
			t.Errorf("%s: reply %q (closed %v): want one 400, the connection closed, /stats never answered", name, reply, closed)
		}
	}
	// Plain framing still works: keep-alive requests by Content-Length,
	// and a chunked request alone, which closes its connection.
	twice := "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(event)) + "\r\n\r\n" + event
	if reply, _ := rawExchange(t, addr, twice+twice+"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); strings.Count(reply, "HTTP/1.1 200") != 3 {
		t.Errorf("three keep-alive requests: %q", reply)
	}
	reply, closed := rawExchange(t, addr, "POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+chunked+smuggled)
	if !strings.HasPrefix(reply, "HTTP/1.1 200") || !closed || strings.Count(reply, "HTTP/1.") != 1 {
		t.Errorf("chunked request: %q (closed %v): want 200 and the connection closed", reply, closed)
	}
	if st := ts.drain(10 * time.Second); st.Received != 3 {
		t.Errorf("received %d, want the 3 well-framed publishes", st.Received)
	}
}

// TestPublishEncodedOnRealWiring: a gzip body through the real server, and
// an unknown coding refused with 415.
func TestPublishEncodedOnRealWiring(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(zw, "%s\n", mustJSON(t, makeEvent(i, "gz")))
	}
	_ = zw.Close()
	req, _ := http.NewRequest(http.MethodPost, ts.base+"/publish?invalid=skip", bytes.NewReader(buf.Bytes()))
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"enqueued":3`) {
		t.Fatalf("gzip NDJSON without a content type: %d %s", resp.StatusCode, body)
	}
	req, _ = http.NewRequest(http.MethodPost, ts.base+"/publish", bytes.NewReader(buf.Bytes()))
	req.Header.Set("Content-Encoding", "br")
	resp, err = ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("Content-Encoding br: %d, want 415", resp.StatusCode)
	}
	if st := ts.drain(10 * time.Second); st.UniqueProcessed != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestErrorsNameNoServerPaths: the log's refusals reach clients without the
// I/O error, which names files of the data directory.
func TestErrorsNameNoServerPaths(t *testing.T) {
	cause := &pathError{path: "/srv/aggregator/data/wal/00000000000000000001", err: syscall.ENOSPC}
	for _, err := range []error{
		fmt.Errorf("%w: %w", wal.ErrUnavailable, cause), wal.ErrClosed, fmt.Errorf("sync: %w", syscall.EIO),
	} {
		mapped := walError(err)
		if statusForTest(mapped) != http.StatusServiceUnavailable || !errors.Is(mapped, err) {
			t.Errorf("walError(%v) = %v: want a 503 that wraps it", err, mapped)
		}
		if msg := publicText(mapped); strings.Contains(msg, "/srv") || !strings.HasPrefix(msg, "log cannot write: ") {
			t.Errorf("walError(%v): clients see %q", err, msg)
		}
	}
	if msg := publicText(walError(fmt.Errorf("%w: %w", wal.ErrUnavailable, cause))); msg != "log cannot write: no space left on device" {
		t.Errorf("disk full: clients see %q", msg)
	}
}

type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return "write " + e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// publicText is what api.fail shows a client for err.
func publicText(err error) string { return event.PublicMessage(err) }
