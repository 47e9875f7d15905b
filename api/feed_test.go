package api

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// streamTo opens GET /feed as an event stream on a real HTTP server.
func streamTo(tb testing.TB, srv *httptest.Server, query string) *http.Response {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/feed?"+query, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := srv.Client().Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("stream: status %d", resp.StatusCode)
	}
	return resp
}

// readUntil reads lines until one has the prefix, or fails after timeout.
func readUntil(tb testing.TB, r *bufio.Reader, prefix string, timeout time.Duration) {
	tb.Helper()
	found := make(chan error, 1)
	go func() {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				found <- err
				return
			}
			if strings.HasPrefix(line, prefix) {
				found <- nil
				return
			}
		}
	}()
	select {
	case err := <-found:
		if err != nil {
			tb.Fatalf("stream ended before %q: %v", prefix, err)
		}
	case <-time.After(timeout):
		tb.Fatalf("no %q within %v", prefix, timeout)
	}
}

// An idle stream gets heartbeat comments; CloseStreams ends it cleanly.
func TestSSEHeartbeatAndClose(t *testing.T) {
	h := New(newFake(), &Options{Heartbeat: 20 * time.Millisecond})
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp := streamTo(t, srv, "")
	r := bufio.NewReader(resp.Body)
	readUntil(t, r, "retry: ", 5*time.Second)
	readUntil(t, r, ": ping", 5*time.Second)
	h.CloseStreams()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, r); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stream after CloseStreams: %v, want a clean end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CloseStreams did not end the stream")
	}
	// A long-poll after CloseStreams answers at once, empty.
	rec := do(t, h, http.MethodGet, "/feed?wait=60s", "", "")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"events":[]`) {
		t.Fatalf("long-poll after CloseStreams: %d %s", rec.Code, rec.Body.String())
	}
}

// A reader that does not take what the stream sends is cut off after the
// write timeout: the stream ends instead of piling events up for it.
func TestSSESlowReaderIsCut(t *testing.T) {
	f := newFake()
	h := New(f, &Options{StreamWriteTimeout: 100 * time.Millisecond})
	srv := httptest.NewServer(h)
	defer srv.Close()
	pad := strings.Repeat("x", 60<<10)
	for i := range 400 { // 24 MB: more than the socket buffers hold
		body := fmt.Sprintf(`{"topic":"t","event_id":"%d","timestamp":"2025-10-20T00:00:00Z","source":"s","payload":{"p":%q}}`, i, pad)
		if rec := do(t, h, http.MethodPost, "/publish", "", body); rec.Code != 200 {
			t.Fatalf("publish: %d", rec.Code)
		}
	}
	resp := streamTo(t, srv, "")
	time.Sleep(time.Second) // the reader stalls: the server's writes block, then time out
	n, _ := io.Copy(io.Discard, resp.Body)
	if n >= 400*60<<10 {
		t.Fatalf("the slow reader got all %d bytes: it was not cut", n)
	}
	t.Logf("the stalled reader got %d bytes before the cut", n)
}
