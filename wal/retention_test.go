package wal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestRetentionKeepsSegmentsBounded(t *testing.T) {
	const segSize = 2 << 10
	dir := t.TempDir()
	opts := &Options{SegmentSize: segSize, refreshAfter: 3} // reopen tidwall/wal often
	l := openLog(t, dir, opts)
	body := make([]byte, 100)
	maxSegs := 0
	for round := range 200 {
		for range 5 {
			mustAppend(t, l, body, body)
		}
		// The consumer lags 20 records (~2.3 KiB) behind.
		checkpoint := l.LastOffset() - min(20, l.LastOffset())
		if err := l.TruncateFront(checkpoint + 1); err != nil {
			t.Fatalf("round %d: TruncateFront: %v", round, err)
		}
		st := l.Stats()
		maxSegs = max(maxSegs, st.Segments)
		if st.Segments > 4 {
			t.Fatalf("round %d: %d segments (%d bytes) for a lag of 20 records", round, st.Segments, st.Bytes)
		}
		if st.FirstOffset > checkpoint+1 {
			t.Fatalf("round %d: FirstOffset %d passed the checkpoint %d", round, st.FirstOffset, checkpoint)
		}
		if err := l.Read(checkpoint+1, 0, func(uint64, []byte) error { return nil }); err != nil {
			t.Fatalf("round %d: reading after the checkpoint: %v", round, err)
		}
	}
	checkDurableFiles(t, l)
	first := l.FirstOffset()
	if first <= 1 {
		t.Fatalf("FirstOffset %d: nothing was freed", first)
	}
	if err := l.Read(first-1, 1, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read below FirstOffset: %v", err)
	}
	// Nothing to free: no change. Everything consumed: only the tail stays.
	if err := l.TruncateFront(first); err != nil || l.FirstOffset() != first {
		t.Fatalf("TruncateFront(first): %v, first now %d", err, l.FirstOffset())
	}
	if err := l.TruncateFront(l.LastOffset() + 1); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Segments != 1 {
		t.Fatalf("%d segments after consuming everything", st.Segments)
	}
	t.Logf("at most %d segments of %d bytes", maxSegs, segSize)

	// Offsets never restart, also when the front was removed.
	last, first := l.LastOffset(), l.FirstOffset()
	l.Close()
	l = openLog(t, dir, opts)
	if l.LastOffset() != last || l.FirstOffset() != first {
		t.Fatalf("reopened: %d..%d, want %d..%d", l.FirstOffset(), l.LastOffset(), first, last)
	}
	if got, _ := mustAppend(t, l, body); got != last+1 {
		t.Fatalf("append after reopen got %d, want %d", got, last+1)
	}
}

// TestConsumerTailsWhileAppending runs appenders against a consumer that
// waits, reads, checks every record and truncates behind itself.
func TestConsumerTailsWhileAppending(t *testing.T) {
	const appenders, calls = 8, 50
	l := openLog(t, t.TempDir(), &Options{SegmentSize: 4 << 10, CacheRecords: 64})
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				recs := [][]byte{fmt.Appendf(nil, "%d/%d/0", a, c), fmt.Appendf(nil, "%d/%d/1", a, c)}
				if _, _, err := l.Append(context.Background(), recs); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		}()
	}
	total := uint64(appenders * calls * 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	next := uint64(1)
	seen := map[string]bool{}
	for next <= total {
		if err := l.Wait(ctx, next-1); err != nil {
			t.Fatalf("Wait(%d): %v", next-1, err)
		}
		err := l.Read(next, 100, func(off uint64, data []byte) error {
			if off != next {
				return fmt.Errorf("got offset %d, want %d", off, next)
			}
			if seen[string(data)] {
				return fmt.Errorf("record %q read twice", data)
			}
			seen[string(data)] = true
			next++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.TruncateFront(next); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if len(seen) != int(total) || l.LastOffset() != total {
		t.Fatalf("read %d distinct records, LastOffset %d, want %d", len(seen), l.LastOffset(), total)
	}
	if st := l.Stats(); st.Segments > 2 {
		t.Fatalf("%d segments left after the consumer caught up", st.Segments)
	}
}
