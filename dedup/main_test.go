package dedup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashEnvDir) != "" {
		os.Exit(crashHelper())
	}
	code := m.Run()
	removeFixtures()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// mustOpen opens a store in a fresh directory and closes it at cleanup.
func mustOpen(tb testing.TB, opts *Options) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "index.db")
	return mustOpenPath(tb, path, opts), path
}

func mustOpenPath(tb testing.TB, path string, opts *Options) *Store {
	tb.Helper()
	s, err := Open(path, opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

var baseTime = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// ev builds an event with a payload naming it.
func ev(topic, id string, ts time.Time) event.Event {
	return event.Event{Topic: topic, EventID: id, Timestamp: ts, Source: "test",
		Payload: []byte(fmt.Sprintf(`{"id":%q}`, id))}
}

// entries numbers events consecutively from first.
func entries(first uint64, evs ...event.Event) []Entry {
	out := make([]Entry, len(evs))
	for i, e := range evs {
		out[i] = Entry{Offset: first + uint64(i), Event: e}
	}
	return out
}

func mustApply(tb testing.TB, s *Store, es []Entry) ApplyResult {
	tb.Helper()
	res, err := s.Apply(es)
	if err != nil {
		tb.Fatalf("Apply: %v", err)
	}
	return res
}

func mustStats(tb testing.TB, s *Store) Stats {
	tb.Helper()
	st, err := s.Stats()
	if err != nil {
		tb.Fatalf("Stats: %v", err)
	}
	return st
}

// listAll pages through a query with the given page size and returns every
// event, failing on a repeated cursor.
func listAll(tb testing.TB, s *Store, topic string, limit int) []event.Stored {
	tb.Helper()
	var out []event.Stored
	cur := ""
	for pages := 0; ; pages++ {
		if pages > 1_000_000 {
			tb.Fatal("listAll: no end")
		}
		p, err := s.List(event.ListQuery{Topic: topic, Cursor: cur, Limit: limit})
		if err != nil {
			tb.Fatalf("List(%q, %q): %v", topic, cur, err)
		}
		if len(p.Events) > limit {
			tb.Fatalf("page of %d events, limit %d", len(p.Events), limit)
		}
		out = append(out, p.Events...)
		if p.NextCursor == "" {
			return out
		}
		if len(p.Events) != limit {
			tb.Fatalf("short page (%d of %d) with a next cursor", len(p.Events), limit)
		}
		cur = p.NextCursor
	}
}

// fakeLog is an in-memory Source with the contract of *wal.Log: offsets
// from 1, Wait wakes on append, Read refuses offsets below the front.
type fakeLog struct {
	mu      sync.Mutex
	first   uint64   // offset of recs[0]
	recs    [][]byte // records first..first+len-1
	changed chan struct{}
	reads   int
	readErr error
	minRead uint64 // lowest `from` ever passed to Read (0 = none)
}

func newFakeLog() *fakeLog { return &fakeLog{first: 1, changed: make(chan struct{})} }

func (l *fakeLog) append(recs ...[]byte) (last uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, recs...)
	close(l.changed)
	l.changed = make(chan struct{})
	return l.first + uint64(len(l.recs)) - 1
}

func (l *fakeLog) appendEvents(evs ...event.Event) uint64 {
	recs := make([][]byte, len(evs))
	for i := range evs {
		recs[i] = evs[i].AppendBinary(nil)
	}
	return l.append(recs...)
}

func (l *fakeLog) last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first + uint64(len(l.recs)) - 1
}

func (l *fakeLog) front() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

func (l *fakeLog) Wait(ctx context.Context, after uint64) error {
	for {
		l.mu.Lock()
		last, ch := l.first+uint64(len(l.recs))-1, l.changed
		l.mu.Unlock()
		if last > after {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (l *fakeLog) Read(from uint64, limit int, fn func(uint64, []byte) error) error {
	l.mu.Lock()
	l.reads++
	if l.readErr != nil {
		err := l.readErr
		l.mu.Unlock()
		return err
	}
	if l.minRead == 0 || from < l.minRead {
		l.minRead = from
	}
	last := l.first + uint64(len(l.recs)) - 1
	if from < l.first || from > last+1 {
		l.mu.Unlock()
		return fmt.Errorf("fake log: read %d outside [%d, %d]", from, l.first, last+1)
	}
	recs := l.recs[from-l.first:]
	recs = recs[:min(len(recs), limit)]
	l.mu.Unlock()
	for i, r := range recs {
		if err := fn(from+uint64(i), r); err != nil {
			return err
		}
	}
	return nil
}

func (l *fakeLog) LastOffset() uint64 { return l.last() }

func (l *fakeLog) TruncateFront(offset uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	last := l.first + uint64(len(l.recs)) - 1
	if offset > last+1 {
		return fmt.Errorf("fake log: truncate to %d past %d", offset, last+1)
	}
	if offset > l.first {
		l.recs = l.recs[offset-l.first:]
		l.first = offset
	}
	return nil
}
