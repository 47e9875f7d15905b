package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/internal/poll"
	"github.com/aggregator-dev/aggregator/wal"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The reference service's five tests (tests/test_app.py), against the real
// wiring: log, index, consumer and API in one in-process server.

func TestReferenceSchemaValidation(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	status, body := ts.do(http.MethodPost, "/publish", "application/json", []byte(`{"topic":"t","event_id":"e"}`))
	if status != http.StatusUnprocessableEntity {
		t.Fatalf("status %d, want 422: %s", status, body)
	}
	if st := ts.stats(); st.Received != 0 {
		t.Fatalf("a rejected event was received: %+v", st)
	}
}

func TestReferenceDedupPersistence(t *testing.T) {
	dir := t.TempDir()
	ev := makeEvent(1, "t1")

	ts := startServer(t, dir, nil)
	ts.publish(ev)
	if st := ts.drain(10 * time.Second); st.UniqueProcessed != 1 {
		t.Fatalf("unique_processed %d, want 1", st.UniqueProcessed)
	}
	ts.stop(t)

	// Restart on the same data directory: the key is remembered.
	ts2 := startServer(t, dir, nil)
	ts2.publish(ev)
	st := ts2.drain(10 * time.Second)
	// The reference accepted either; both must hold here.
	if st.DuplicateDropped != 1 || st.UniqueProcessed != 1 || st.Received != 2 {
		t.Fatalf("after restart: %+v, want received 2, unique 1, duplicates 1", st)
	}
	if evs := ts2.listAll(""); len(evs) != 1 {
		t.Fatalf("listed %d events, want 1", len(evs))
	}
}

func TestReferenceDedupDetection(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ev := makeEvent(2, "t1")
	ts.publish(ev)
	ts.publish(ev)
	st := ts.drain(10 * time.Second)
	if st.Received != 2 || st.UniqueProcessed != 1 || st.DuplicateDropped != 1 {
		t.Fatalf("stats %+v, want received 2, unique 1, duplicates 1", st)
	}
}

func TestReferenceEventsStatsConsistency(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	var events []any
	for i := 3; i < 8; i++ {
		events = append(events, makeEvent(i, "t1"))
	}
	if r := ts.publish(events); r.Enqueued != 5 || r.LastOffset-r.FirstOffset != 4 {
		t.Fatalf("reply %+v", r)
	}
	st := ts.drain(10 * time.Second)
	evs := ts.listAll("")
	if uint64(len(evs)) != st.UniqueProcessed || len(evs) != 5 {
		t.Fatalf("listed %d events, unique_processed %d, want 5 and 5", len(evs), st.UniqueProcessed)
	}
	for _, e := range evs {
		if e.Payload["i"] == nil || e.Timestamp != "2025-10-20T00:00:00Z" || e.Source != "test" {
			t.Errorf("event %+v", e)
		}
	}
	if len(st.Topics) != 1 || st.Topics[0] != "t1" || st.TopicCounts["t1"] != 5 {
		t.Errorf("topics %v %v", st.Topics, st.TopicCounts)
	}
}

func TestReferenceStressBatch(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	const total = 5000
	unique := int(total * (1 - 0.2))
	events := make([]any, 0, total)
	for i := range unique {
		events = append(events, makeEvent(i, "stress"))
	}
	for i := range total - unique {
		events = append(events, makeEvent(i%unique, "stress"))
	}
	start := time.Now()
	ts.publish(events)
	st := ts.drain(30 * time.Second)
	t.Logf("5000 events (20%% duplicates) published and applied in %v", time.Since(start))
	if st.Received != total || st.UniqueProcessed != uint64(unique) || st.DuplicateDropped != total-uint64(unique) {
		t.Fatalf("stats %+v, want received %d, unique %d", st, total, unique)
	}
	seen := map[string]bool{}
	for _, e := range ts.listAll("stress") {
		if seen[e.EventID] {
			t.Fatalf("event %s listed twice", e.EventID)
		}
		seen[e.EventID] = true
	}
	if len(seen) != unique {
		t.Fatalf("listed %d distinct events, want %d", len(seen), unique)
	}
}

// Beyond the reference.

func TestSecondProcessFailsFast(t *testing.T) {
	dir := t.TempDir()
	startServer(t, dir, nil)

	cfg := defaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := NewServer(cfg, nil).Run(ctx)
	if !errors.Is(err, wal.ErrLocked) || !strings.Contains(err.Error(), "in use by another aggregator process") {
		t.Fatalf("second server on the same directory: %v, want a clear wal.ErrLocked", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("second server took %v to fail", took)
	}
}

func TestLifetimeCountersSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	for i := range 3 {
		ts.publish([]any{makeEvent(i, "a"), makeEvent(i, "b"), makeEvent(0, "a")})
	}
	before := ts.drain(10 * time.Second)
	ts.stop(t)

	ts2 := startServer(t, dir, nil)
	ts2.waitReady(10 * time.Second)
	after := ts2.drain(10 * time.Second)
	if after.Received != 9 || after.UniqueProcessed != 6 || after.DuplicateDropped != 3 ||
		after.Received != before.Received || after.WAL.LastOffset != 9 {
		t.Fatalf("before restart %+v\nafter %+v", before, after)
	}
	// Offsets continue after a restart.
	if r := ts2.publish(makeEvent(9, "a")); r.FirstOffset != 10 {
		t.Fatalf("offset after restart %d, want 10", r.FirstOffset)
	}
}

func TestEndpointsOnRealWiring(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ts.waitReady(10 * time.Second)
	ts.publish(makeEvent(1, "t"))
	ts.drain(10 * time.Second)
	// The consumer counts an applied chunk in the metrics just after the
	// checkpoint moves, so the counter may trail the drain for a moment.
	var body []byte
	if !poll.Within(10*time.Second, func() bool {
		_, body = ts.do("GET", "/metrics", "", nil)
		return strings.Contains(string(body), "aggregator_events_unique_total 1\n")
	}) {
		t.Fatalf("metrics never counted the unique event:\n%s", body)
	}
	// Every metric of the service, from the API, the log and the index,
	// is on the one registry /metrics serves.
	for _, want := range []string{
		"aggregator_events_received_total 1\n",
		"aggregator_events_duplicate_total 0\n",
		`aggregator_publish_request_duration_seconds_count{code="200"} 1` + "\n",
		"aggregator_publish_inflight 0\n",
		"aggregator_wal_fsync_duration_seconds_count ",
		"aggregator_wal_records_per_commit_count ",
		"aggregator_wal_written_bytes_total ",
		"aggregator_wal_bytes ",
		"aggregator_wal_segments 1\n",
		"aggregator_wal_last_offset 1\n",
		"aggregator_consumer_lag 0\n",
		"aggregator_consumer_checkpoint 1\n",
		"aggregator_consumer_apply_duration_seconds_count ",
		"aggregator_consumer_entries_per_apply_count ",
		"aggregator_dedup_keys 1\n",
		"aggregator_topics 1\n",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, c := range []struct {
		method, path string
		status       int
		contains     string
	}{
		{"GET", "/healthz", 200, `"ok"`},
		{"GET", "/readyz", 200, `"ready"`},
		{"GET", "/metrics", 200, "aggregator_events_unique_total 1"},
		{"GET", "/metrics", 200, "aggregator_wal_records_per_commit_count"},
		{"GET", "/events?cursor=bogus", 400, "cursor"},
		{"GET", "/events?limit=0", 400, "limit"},
		{"GET", "/nope", 404, "error"},
		{"PUT", "/publish", 405, "error"},
	} {
		status, body := ts.do(c.method, c.path, "", nil)
		if status != c.status || !strings.Contains(string(body), c.contains) {
			t.Errorf("%s %s: %d %q, want %d containing %q", c.method, c.path, status, body, c.status, c.contains)
		}
	}
}

func TestMaxLagAnswers429(t *testing.T) {
	// A backend with the index attached but no consumer: the lag only grows.
	dir := t.TempDir()
	l, err := wal.Open(dir+"/wal", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := openTestStore(t, dir)
	b := newBackend(l, limits{maxLag: 5})
	b.attach(s, nil)
	evs := testEvents(6)
	if _, _, err := b.Publish(context.Background(), evs); err != nil {
		t.Fatalf("publish at lag 0: %v", err)
	}
	_, _, err = b.Publish(context.Background(), evs[:1])
	if status := statusForTest(err); status != http.StatusTooManyRequests {
		t.Fatalf("publish at lag 6 > 5: %v (status %d), want 429", err, status)
	}
	if got := l.LastOffset(); got != 6 {
		t.Fatalf("log holds %d records, want 6", got)
	}
}

func TestBackendMapsLogErrors(t *testing.T) {
	dir := t.TempDir()
	l, err := wal.Open(dir+"/wal", nil)
	if err != nil {
		t.Fatal(err)
	}
	b := newBackend(l, limits{})
	if err := b.Ready(context.Background()); err == nil {
		t.Fatal("ready before the index is attached")
	}
	if _, err := b.List(context.Background(), listQuery(), func(*event.Stored) bool { return true }); statusForTest(err) != http.StatusServiceUnavailable {
		t.Fatalf("list before the index: %v", err)
	}
	if _, err := b.Stats(context.Background()); statusForTest(err) != http.StatusServiceUnavailable {
		t.Fatalf("stats before the index: %v", err)
	}
	if _, _, err := b.Publish(context.Background(), testEvents(2)); err != nil {
		t.Fatalf("publish before the index is open: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, err = b.Publish(context.Background(), testEvents(1))
	if !errors.Is(err, wal.ErrClosed) || statusForTest(err) != http.StatusServiceUnavailable {
		t.Fatalf("publish on a closed log: %v, want 503 wrapping wal.ErrClosed", err)
	}
	if err := b.Ready(context.Background()); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("ready on a closed log: %v", err)
	}
	for _, e := range []error{fmt.Errorf("x: %w", wal.ErrUnavailable), wal.ErrClosed, fmt.Errorf("write: %w", syscall.ENOSPC)} {
		if statusForTest(walError(e)) != http.StatusServiceUnavailable {
			t.Errorf("walError(%v) is not a 503", e)
		}
	}
	if other := errors.New("other"); walError(other) != other {
		t.Error("walError changed an unrelated error")
	}
}

func TestRunFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	reused := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want string
	}{
		{"address in use", func(c *Config) { c.Addr, c.DataDir = busy.Addr().String(), reused }, "listen"},
		{"data dir is a file", func(c *Config) { c.DataDir = notADir }, "data dir"},
	} {
		cfg := defaultConfig()
		cfg.Addr = "127.0.0.1:0"
		cfg.DataDir = t.TempDir()
		tc.cfg(&cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		srv := NewServer(cfg, nil)
		err := srv.Run(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.want)
		}
		if srv.Addr() != nil {
			t.Errorf("%s: Addr %v after a failed start", tc.name, srv.Addr())
		}
	}
	// The log of the failed start was closed: its directory can be used.
	startServer(t, reused, nil)
}

// TestRefusesIndexAheadOfLog: without --wal-repair, a log that ends before
// the index's checkpoint (a log from elsewhere, or deleted) stops the start.
func TestRefusesIndexAheadOfLog(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	entries := make([]dedup.Entry, 3)
	for i, e := range testEvents(3) {
		entries[i] = dedup.Entry{Offset: uint64(i + 1), Event: e}
	}
	if _, err := s.Apply(entries); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The log is empty: offsets 1..3 would be given again and skipped by
	// the consumer.
	cfg := defaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := NewServer(cfg, nil).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "ahead of the log") {
		t.Fatalf("%v, want a refusal", err)
	}
}

// TestRefusesIndexBehindLog: an index whose checkpoint is before the log's
// first offset (index.db deleted after retention freed segments) stops the
// start instead of a consumer that can never resume.
func TestRefusesIndexBehindLog(t *testing.T) {
	dir := t.TempDir()
	wlog, err := wal.Open(filepath.Join(dir, "wal"), &wal.Options{SegmentSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	evs := testEvents(200)
	recs := make([][]byte, len(evs))
	for i := range evs {
		recs[i] = evs[i].AppendBinary(nil)
	}
	for i := range recs { // one commit each, so segments fill one by one
		if _, _, err := wlog.Append(context.Background(), recs[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := wlog.TruncateFront(wlog.LastOffset()); err != nil {
		t.Fatal(err)
	}
	first := wlog.FirstOffset()
	if err := wlog.Close(); err != nil {
		t.Fatal(err)
	}
	if first <= 1 {
		t.Fatalf("first offset %d after truncation: the test needs freed segments", first)
	}
	cfg := defaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dir // no index.db: checkpoint 0
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = NewServer(cfg, nil).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "behind the log's first offset") {
		t.Fatalf("%v, want a refusal", err)
	}
}
