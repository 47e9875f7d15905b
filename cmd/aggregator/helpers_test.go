package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/internal/poll"
	"github.com/aggregator-dev/aggregator/wal"
)

// client is a small JSON client of a running aggregator.
type client struct {
	tb    testing.TB
	base  string
	http  *http.Client
	token string // sent as a bearer token when set
}

func newClient(tb testing.TB, base string) *client {
	tb.Helper()
	c := &client{tb: tb, base: base, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16},
	}}
	tb.Cleanup(c.http.CloseIdleConnections)
	return c
}

// do sends a request and returns the status and body; a transport error
// fails the test.
func (c *client) do(method, path, contentType string, body []byte) (int, []byte) {
	c.tb.Helper()
	status, out, err := c.try(method, path, contentType, body)
	if err != nil {
		c.tb.Fatalf("%s %s: %v", method, path, err)
	}
	return status, out
}

func (c *client) try(method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// publish posts v as JSON and requires 200.
func (c *client) publish(v any) publishReply {
	c.tb.Helper()
	status, body := c.do(http.MethodPost, "/publish", "application/json", mustJSON(c.tb, v))
	if status != http.StatusOK {
		c.tb.Fatalf("publish: status %d: %s", status, body)
	}
	var r publishReply
	mustDecode(c.tb, body, &r)
	return r
}

type publishReply struct {
	Enqueued    int    `json:"enqueued"`
	FirstOffset uint64 `json:"first_offset"`
	LastOffset  uint64 `json:"last_offset"`
}

func (c *client) stats() api.StatsReply {
	c.tb.Helper()
	status, body := c.do(http.MethodGet, "/stats", "", nil)
	if status != http.StatusOK {
		c.tb.Fatalf("stats: status %d: %s", status, body)
	}
	var s api.StatsReply
	mustDecode(c.tb, body, &s)
	return s
}

// drain polls /stats until the consumer has applied every received event
// (the reference's drain_queue_and_wait, with a deadline that fails).
func (c *client) drain(timeout time.Duration) api.StatsReply {
	c.tb.Helper()
	var (
		last   api.StatsReply
		status int
		err    error
	)
	caughtUp := poll.Within(timeout, func() bool {
		var body []byte
		status, body, err = c.try(http.MethodGet, "/stats", "", nil)
		if err != nil || status != http.StatusOK {
			return false
		}
		mustDecode(c.tb, body, &last)
		return last.Received == last.UniqueProcessed+last.DuplicateDropped && last.WAL.Lag == 0
	})
	if !caughtUp {
		c.tb.Fatalf("consumer did not catch up within %v: last stats %+v (status %d, err %v)", timeout, last, status, err)
	}
	return last
}

// waitReady polls /readyz until 200.
func (c *client) waitReady(timeout time.Duration) {
	c.tb.Helper()
	var (
		status int
		body   []byte
		err    error
	)
	ready := poll.Within(timeout, func() bool {
		status, body, err = c.try(http.MethodGet, "/readyz", "", nil)
		return err == nil && status == http.StatusOK
	})
	if !ready {
		c.tb.Fatalf("not ready within %v: status %d %s, err %v", timeout, status, body, err)
	}
}

type storedEvent struct {
	Topic     string         `json:"topic"`
	EventID   string         `json:"event_id"`
	Timestamp string         `json:"timestamp"`
	Source    string         `json:"source"`
	Payload   map[string]any `json:"payload"`
	Seq       uint64         `json:"seq"`
	Offset    uint64         `json:"offset"`
}

// feedPage is the body of GET /feed.
type feedPage struct {
	Events    []storedEvent `json:"events"`
	NextAfter uint64        `json:"next_after"`
}

// feed reads one page of GET /feed with the given query.
func (c *client) feed(query string) feedPage {
	c.tb.Helper()
	status, body := c.do(http.MethodGet, "/feed?"+query, "", nil)
	if status != http.StatusOK {
		c.tb.Fatalf("feed?%s: status %d: %s", query, status, body)
	}
	var p feedPage
	mustDecode(c.tb, body, &p)
	return p
}

// feedAll reads the feed of topic ("" = all) from the start to its end and
// checks that seqs ascend and next_after follows them.
func (c *client) feedAll(topic string) []storedEvent {
	c.tb.Helper()
	var all []storedEvent
	after := uint64(0)
	for page := 0; ; page++ {
		if page > 10_000 {
			c.tb.Fatal("feed does not end")
		}
		q := url.Values{"limit": {"3000"}, "after": {strconv.FormatUint(after, 10)}}
		if topic != "" {
			q.Set("topic", topic)
		}
		p := c.feed(q.Encode())
		for _, e := range p.Events {
			if e.Seq <= after {
				c.tb.Fatalf("feed: seq %d after %d", e.Seq, after)
			}
			after = e.Seq
		}
		if p.NextAfter != after {
			c.tb.Fatalf("feed: next_after %d, last seq %d", p.NextAfter, after)
		}
		all = append(all, p.Events...)
		if len(p.Events) == 0 {
			return all
		}
	}
}

// listAll pages through GET /events for topic ("" = all).
func (c *client) listAll(topic string) []storedEvent {
	c.tb.Helper()
	var all []storedEvent
	cursor := ""
	for page := 0; ; page++ {
		if page > 10_000 {
			c.tb.Fatal("listing does not end")
		}
		q := url.Values{"limit": {"5000"}}
		if topic != "" {
			q.Set("topic", topic)
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		status, body := c.do(http.MethodGet, "/events?"+q.Encode(), "", nil)
		if status != http.StatusOK {
			c.tb.Fatalf("events: status %d: %s", status, body)
		}
		var p struct {
			Events     []storedEvent `json:"events"`
			NextCursor *string       `json:"next_cursor"`
		}
		mustDecode(c.tb, body, &p)
		all = append(all, p.Events...)
		if p.NextCursor == nil {
			return all
		}
		cursor = *p.NextCursor
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustDecode(tb testing.TB, b []byte, v any) {
	tb.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		tb.Fatalf("decode %q: %v", b, err)
	}
}

// makeEvent is the reference test's make_event.
func makeEvent(i int, topic string) map[string]any {
	return map[string]any{
		"topic":     topic,
		"event_id":  fmt.Sprintf("id-%d", i),
		"timestamp": "2025-10-20T00:00:00Z",
		"source":    "test",
		"payload":   map[string]any{"i": i},
	}
}

// testServer is an aggregator running in-process.
type testServer struct {
	*client
	srv    *Server
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer // the server's log
}

// startServer runs a Server on 127.0.0.1:0 with data in dir until the test
// ends (or stop is called), and waits until it is ready.
func startServer(tb testing.TB, dir string, mutate func(*Config)) *testServer {
	tb.Helper()
	ts := startServerWith(tb, dir, mutate)
	ts.waitReady(30 * time.Second)
	return ts
}

// startServerWith is startServer returning once the server listens, without
// waiting for it to be ready.
func startServerWith(tb testing.TB, dir string, mutate func(*Config)) *testServer {
	tb.Helper()
	return startServerWithSeam(tb, dir, mutate, nil)
}

// startServerWithSeam is startServerWith with a seam on the log as the
// consumer reads it (see Server.sourceSeam).
func startServerWithSeam(tb testing.TB, dir string, mutate func(*Config),
	sourceSeam func(*wal.Log, *dedup.Store) dedup.Source) *testServer {
	tb.Helper()
	cfg := defaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.BloomExpectedKeys = 1 << 14
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logger, logs := testLogger(tb)
	srv := NewServer(cfg, logger)
	srv.sourceSeam = sourceSeam
	ts := &testServer{srv: srv, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { ts.done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-ts.done:
		cancel()
		tb.Fatalf("server did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		tb.Fatal("server did not start within 30s")
	}
	ts.client = newClient(tb, "http://"+srv.Addr().String())
	tb.Cleanup(func() { ts.stop(tb) })
	return ts
}

// stop shuts the server down and requires a clean exit; calling it again is
// harmless.
func (ts *testServer) stop(tb testing.TB) {
	tb.Helper()
	if ts.done == nil {
		return
	}
	// A connection the client dialed and never used counts as active for
	// its first 5 s in http.Server.Shutdown: close the idle ones first.
	ts.http.CloseIdleConnections()
	ts.cancel()
	select {
	case err := <-ts.done:
		if err != nil {
			tb.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		tb.Fatal("server did not stop within 30s")
	}
	ts.done = nil
	ts.http.CloseIdleConnections()
}

// testLogger collects the server's logs and prints them if the test fails.
func testLogger(tb testing.TB) (*slog.Logger, *syncBuffer) {
	tb.Helper()
	buf := &syncBuffer{}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("server log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})), buf
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func statusForTest(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return api.StatusOf(err)
}

func openTestStore(tb testing.TB, dir string) *dedup.Store {
	tb.Helper()
	s, err := dedup.Open(filepath.Join(dir, "index.db"), &dedup.Options{ExpectedKeys: 1024})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func testEvents(n int) []event.Event {
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = event.Event{Topic: "t", EventID: fmt.Sprint("e", i), Source: "s",
			Timestamp: time.Date(2025, 10, 20, 0, 0, 0, 0, time.UTC), Payload: []byte(`{}`)}
	}
	return evs
}

func listQuery() event.ListQuery { return event.ListQuery{Limit: 10} }
