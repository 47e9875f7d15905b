package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/wal"
)

// TestRepairFillsLogUpToCheckpoint damages an acknowledged record that the
// index has applied: --wal-repair cuts the log there, and the server appends
// filler records up to the index's checkpoint, so that a new event gets an
// offset after it (and is listed) instead of a reused one the consumer skips.
func TestRepairFillsLogUpToCheckpoint(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	for i := 1; i <= 6; i++ { // one commit each: the damage is not a torn tail
		ts.publish(makeEvent(i, "r"))
	}
	if st := ts.drain(10 * time.Second); st.WAL.Checkpoint != 6 {
		t.Fatalf("checkpoint %d, want 6", st.WAL.Checkpoint)
	}
	ts.stop(t)

	// Flip a byte of event id-2's body in its segment.
	segs, err := filepath.Glob(filepath.Join(dir, "wal", "*"))
	if err != nil {
		t.Fatal(err)
	}
	damaged := false
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("id-2")) {
			continue
		}
		i := bytes.Index(b, []byte("id-2"))
		b[i+3] = '9'
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		damaged = true
	}
	if !damaged {
		t.Fatal("record id-2 not found in the log's segments")
	}

	// Without --wal-repair the damage stops the start.
	cfg := defaultConfig()
	cfg.Addr, cfg.DataDir = "127.0.0.1:0", dir
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := NewServer(cfg, nil).Run(ctx); err == nil {
		t.Fatal("started on a damaged log without --wal-repair")
	}

	ts = startServerWith(t, dir, func(c *Config) { c.WALRepair = true })
	ts.waitReady(30 * time.Second)
	if logs := ts.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "fillers=5 from_offset=2 to_offset=6") {
		t.Fatalf("no warning with the filler count in the log:\n%s", logs)
	}
	r := ts.publish(makeEvent(7, "r"))
	if r.FirstOffset != 7 {
		t.Fatalf("new event got offset %d after the repair, want 7 (after the checkpoint 6)", r.FirstOffset)
	}
	st := ts.drain(10 * time.Second)
	ids := map[string]uint64{}
	for _, e := range ts.listAll("r") {
		ids[e.EventID] = e.Offset
	}
	for i := 1; i <= 7; i++ {
		if _, ok := ids[fmt.Sprint("id-", i)]; !ok {
			t.Errorf("id-%d not listed after the repair: %v", i, ids)
		}
	}
	if st.Received != 7 || st.UniqueProcessed != 7 || st.WAL.Checkpoint != 7 {
		t.Fatalf("stats after the repair: %+v", st)
	}
	// The copy of the damaged segment is as private as the rest.
	if files := checkModes(t, filepath.Join(dir, "wal", "damaged")); files == 0 {
		t.Fatal("no copy of the damaged segment under wal/damaged")
	}
}

// TestBackpressureUnderLoad runs publishers at full speed against a consumer
// slowed through its seam (it applies one chunk per refused request), with bounds on the lag and on the log's bytes:
// the lag seen just before every apply (where it peaks, since only applies
// lower it) never passes the bound by more than one request's events, the
// log's size never passes its bound by more than one request's bytes,
// publishers get 429 with Retry-After, and every acknowledged event is listed
// at the end.
func TestBackpressureUnderLoad(t *testing.T) {
	const segment = 16 << 10
	t.Run("lag", func(t *testing.T) { testBackpressure(t, 300, 0) })
	t.Run("bytes", func(t *testing.T) { testBackpressure(t, 0, 4*segment) })
}

func testBackpressure(t *testing.T, maxLag uint64, maxBytes int64) {
	const (
		batch      = 20
		segment    = 16 << 10
		publishers = 6
	)
	var (
		mu        sync.Mutex
		maxSeen   uint64
		maxSize   int64
		applies   int
		refused   atomic.Int64
		release   = make(chan struct{})
		releasedC sync.Once
		kick      = make(chan struct{}, 1)
	)
	seam := func(l *wal.Log, s *dedup.Store) dedup.Source {
		return gatedSource{Log: l, gate: func() {
			// Slow: one read per refused publish, so the bounds are hit
			// again and again however fast this machine is; free once
			// the publishers are done.
			select {
			case <-release:
			case <-kick:
			}
			st := l.Stats()
			lag := st.LastOffset - s.Checkpoint()
			mu.Lock()
			maxSeen = max(maxSeen, lag)
			maxSize = max(maxSize, st.Bytes)
			applies++
			mu.Unlock()
		}}
	}
	dir := t.TempDir()
	ts := startServerWithSeam(t, dir, func(c *Config) {
		c.MaxLag = maxLag
		c.SegmentSize = segment
		c.MaxWALBytes = maxBytes
		c.ChunkEntries = 20
	}, seam)
	ts.waitReady(30 * time.Second)
	defer releasedC.Do(func() { close(release) })

	var (
		ackMu sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
	)
	// Until enough refusals show that the bounds were hit again and again
	// (or a generous time cap).
	const enough = 60
	deadline := time.Now().Add(15 * time.Second)
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100_000 && refused.Load() < enough && time.Now().Before(deadline); n++ {
				evs := make([]any, batch)
				ids := make([]string, batch)
				for i := range evs {
					ids[i] = fmt.Sprintf("p%d-%d-%d", p, n, i)
					e := makeEvent(0, "bp")
					e["event_id"] = ids[i]
					e["payload"] = map[string]any{"pad": strings.Repeat("x", 100)}
					evs[i] = e
				}
				req, _ := http.NewRequest(http.MethodPost, ts.base+"/publish", bytes.NewReader(mustJSON(t, evs)))
				resp, err := ts.http.Do(req)
				if err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					ackMu.Lock()
					for _, id := range ids {
						acked[id] = true
					}
					ackMu.Unlock()
				case http.StatusTooManyRequests:
					if resp.Header.Get("Retry-After") == "" {
						t.Errorf("429 without Retry-After")
						return
					}
					refused.Add(1)
					select {
					case kick <- struct{}{}:
					default:
					}
				default:
					t.Errorf("publish: status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	releasedC.Do(func() { close(release) })
	st := ts.drain(60 * time.Second)

	mu.Lock()
	defer mu.Unlock()
	t.Logf("acked %d events, %d requests refused, %d applies, max lag seen %d (bound %d), max log bytes %d (bound %d)",
		len(acked), refused.Load(), applies, maxSeen, maxLag, maxSize, maxBytes)
	if refused.Load() == 0 {
		t.Fatal("no publish was refused: the consumer was not slow enough to test the bounds")
	}
	if maxLag > 0 && maxSeen > maxLag+batch {
		t.Errorf("lag reached %d, above the bound %d plus one request (%d)", maxSeen, maxLag, batch)
	}
	// One request's records: bodies of about 200 bytes plus the frame.
	if maxBytes > 0 && maxSize > maxBytes+batch*(400+wal.RecordOverhead) {
		t.Errorf("log reached %d bytes, above the bound %d plus one request", maxSize, maxBytes)
	}
	listed := map[string]bool{}
	for _, e := range ts.listAll("bp") {
		listed[e.EventID] = true
	}
	for id := range acked {
		if !listed[id] {
			t.Fatalf("acknowledged event %s is not listed (%d listed, %d acked)", id, len(listed), len(acked))
		}
	}
	if uint64(len(acked)) != st.UniqueProcessed {
		t.Fatalf("unique %d, acked %d: a refused request was written", st.UniqueProcessed, len(acked))
	}
	// Below the bounds again: accepted.
	ts.publish(makeEvent(1, "after"))
}

// gatedSource is the log as the consumer reads it, with gate called before
// every read.
type gatedSource struct {
	*wal.Log
	gate func()
}

func (g gatedSource) Read(from uint64, limit int, fn func(uint64, []byte) error) error {
	g.gate()
	return g.Log.Read(from, limit, fn)
}

// TestMaxWALBytesAnswers429 checks the size bound on the backend alone.
func TestMaxWALBytesAnswers429(t *testing.T) {
	dir := t.TempDir()
	l, err := wal.Open(dir+"/wal", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := newBackend(l, limits{maxBytes: 500})
	if _, _, err := b.Publish(context.Background(), testEvents(20)); err != nil {
		t.Fatalf("publish into an empty log: %v", err)
	}
	if l.Stats().Bytes <= 500 {
		t.Fatalf("log holds %d bytes; the test needs more than the bound", l.Stats().Bytes)
	}
	_, _, err = b.Publish(context.Background(), testEvents(1))
	if status := statusForTest(err); status != http.StatusTooManyRequests {
		t.Fatalf("publish above the size bound: %v (status %d), want 429", err, status)
	}
	if got := l.LastOffset(); got != 20 {
		t.Fatalf("log holds %d records, want 20", got)
	}
}

// TestStatsTopicsBoundOnRealWiring checks that --max-stats-topics reaches the
// API: GET /stats lists at most that many topics and says it cut the list.
func TestStatsTopicsBoundOnRealWiring(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) { c.MaxStatsTopics = 2 })
	ts.publish([]any{makeEvent(1, "t1"), makeEvent(1, "t2"), makeEvent(1, "t3")})
	ts.drain(10 * time.Second)
	_, body := ts.do(http.MethodGet, "/stats", "", nil)
	var st struct {
		Topics          []string          `json:"topics"`
		TopicCounts     map[string]uint64 `json:"topic_counts"`
		TopicsTruncated bool              `json:"topics_truncated"`
		UniqueProcessed uint64            `json:"unique_processed"`
	}
	mustDecode(t, body, &st)
	if len(st.Topics) != 2 || len(st.TopicCounts) != 2 || !st.TopicsTruncated || st.UniqueProcessed != 3 {
		t.Fatalf("stats with --max-stats-topics 2: %s", body)
	}
}
