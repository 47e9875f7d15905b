package dedup

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/event"
)

// mustConsumer returns a consumer of src into s, not started.
func mustConsumer(tb testing.TB, s *Store, src Source, opts *ConsumerOptions) *Consumer {
	tb.Helper()
	c, err := NewConsumer(s, src, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func startConsumer(tb testing.TB, s *Store, src Source, opts *ConsumerOptions) *Consumer {
	tb.Helper()
	c := mustConsumer(tb, s, src, opts)
	c.Start()
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConsumerAppliesInChunksAndTruncates(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	var evs []event.Event
	for i := range 95 {
		evs = append(evs, ev("t", fmt.Sprint(i%60), baseTime)) // 35 duplicates
	}
	log.appendEvents(evs...)
	var mu sync.Mutex
	var sizes []int
	total := 0
	startConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 10, onApply: func(n, u, d int, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, n)
		total += n
		if u+d != n {
			t.Errorf("onApply: %d unique + %d duplicates != %d entries", u, d, n)
		}
	}})
	poll.Until(t, 20*time.Second, "checkpoint 95", func() bool { return s.Checkpoint() == 95 })
	poll.Until(t, 20*time.Second, "truncation", func() bool { return log.front() == 96 })
	st := mustStats(t, s)
	if st.Unique != 60 || st.Duplicates != 35 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, n := range sizes {
		if n > 10 {
			t.Fatalf("chunk of %d entries, max 10", n)
		}
	}
	if total != 95 || len(sizes) < 10 {
		t.Fatalf("chunks %v", sizes)
	}
}

// The consumer blocks in Wait while idle and applies an append as it comes.
func TestConsumerWakesOnAppend(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	startConsumer(t, s, log, &ConsumerOptions{ChunkDelay: -1})
	for i := range 5 {
		last := log.appendEvents(ev("t", fmt.Sprint(i), baseTime))
		poll.Until(t, 20*time.Second, "the append to be applied", func() bool { return s.Checkpoint() == last })
	}
	log.mu.Lock()
	reads := log.reads
	log.mu.Unlock()
	if reads > 10 {
		t.Fatalf("%d reads for 5 appends: the consumer polls", reads)
	}
}

// A chunk that is not full waits up to ChunkDelay for more appends.
func TestConsumerChunkDelayGathers(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	var chunks atomic.Int32
	startConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 100, ChunkDelay: 10 * time.Second,
		onApply: func(int, int, int, time.Duration) { chunks.Add(1) }})
	for i := range 100 { // trickle: all land in one chunk, which fills up
		log.appendEvents(ev("t", fmt.Sprint(i), baseTime))
	}
	poll.Until(t, 20*time.Second, "checkpoint 100", func() bool { return s.Checkpoint() == 100 })
	if n := chunks.Load(); n != 1 {
		t.Fatalf("%d chunks, want 1", n)
	}
}

// ChunkDelay paces the transactions: the first append after a quiet spell
// is applied at once, and the next chunk waits until ChunkDelay has passed
// since that apply began (on synctest's clock).
func TestConsumerChunkDelayPaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := mustOpen(t, nil)
		log := newFakeLog()
		var chunks atomic.Int32
		startConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 100, ChunkDelay: time.Second,
			onApply: func(int, int, int, time.Duration) { chunks.Add(1) }})
		time.Sleep(2 * time.Second) // quiet, past the delay since the start
		log.appendEvents(ev("t", "0", baseTime))
		synctest.Wait()
		if got := s.Checkpoint(); got != 1 {
			t.Fatalf("checkpoint %d right after the first append, want 1 (applied at once)", got)
		}
		log.appendEvents(ev("t", "1", baseTime))
		log.appendEvents(ev("t", "2", baseTime))
		time.Sleep(time.Second - time.Millisecond)
		synctest.Wait()
		if got := s.Checkpoint(); got != 1 {
			t.Fatalf("checkpoint %d before the delay is over, want 1", got)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got, n := s.Checkpoint(), chunks.Load(); got != 3 || n != 2 {
			t.Fatalf("checkpoint %d in %d chunks after the delay, want 3 in 2", got, n)
		}
	})
}

// A WaitCheckpoint caller cuts the pacing short: it is waiting for the
// next apply, so that ?wait=applied does not cost ChunkDelay.
func TestConsumerPacingYieldsToWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := mustOpen(t, nil)
		log := newFakeLog()
		startConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 100, ChunkDelay: time.Hour})
		// The consumer is pacing (an hour since its start): the waiter
		// ends that wait.
		log.appendEvents(ev("t", "0", baseTime))
		synctest.Wait()
		if got := s.Checkpoint(); got != 0 {
			t.Fatalf("checkpoint %d while pacing, want 0", got)
		}
		done := make(chan error, 1)
		go func() { done <- s.WaitCheckpoint(t.Context(), 1) }()
		synctest.Wait()
		if err := <-done; err != nil || s.Checkpoint() != 1 {
			t.Fatalf("WaitCheckpoint: %v, checkpoint %d, want 1 at once", err, s.Checkpoint())
		}
		// The waiter is there before the records: no pacing either.
		go func() { done <- s.WaitCheckpoint(t.Context(), 3) }()
		synctest.Wait()
		log.appendEvents(ev("t", "1", baseTime), ev("t", "2", baseTime))
		synctest.Wait()
		if err := <-done; err != nil || s.Checkpoint() != 3 {
			t.Fatalf("WaitCheckpoint: %v, checkpoint %d, want 3 at once", err, s.Checkpoint())
		}
		// Without a waiter, the pacing is back.
		log.appendEvents(ev("t", "3", baseTime))
		synctest.Wait()
		if got := s.Checkpoint(); got != 3 {
			t.Fatalf("checkpoint %d without a waiter, want 3 (paced)", got)
		}
	})
}

func TestConsumerResumesAtCheckpoint(t *testing.T) {
	s, path := mustOpen(t, nil)
	log := newFakeLog()
	for i := range 50 {
		log.appendEvents(ev("t", fmt.Sprint(i), baseTime))
	}
	c := startConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 8})
	poll.Until(t, 20*time.Second, "checkpoint 50", func() bool { return s.Checkpoint() == 50 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A new log object that still holds everything: the consumer must start
	// at 51, not at the log front.
	log2 := newFakeLog()
	for i := range 60 {
		log2.appendEvents(ev("t", fmt.Sprint(i), baseTime))
	}
	s = mustOpenPath(t, path, nil)
	startConsumer(t, s, log2, nil)
	poll.Until(t, 20*time.Second, "checkpoint 60", func() bool { return s.Checkpoint() == 60 })
	log2.mu.Lock()
	minRead := log2.minRead
	log2.mu.Unlock()
	if minRead != 51 {
		t.Fatalf("first read from %d, want 51", minRead)
	}
	if st := mustStats(t, s); st.Unique != 60 || st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestConsumerCountsUndecodableRecords(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	log.appendEvents(ev("t", "1", baseTime))
	log.append([]byte("not an event"))
	last := log.appendEvents(ev("t", "2", baseTime))
	startConsumer(t, s, log, nil)
	poll.Until(t, 20*time.Second, "checkpoint", func() bool { return s.Checkpoint() == last })
	if st := mustStats(t, s); st.Unique != 2 || st.Malformed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A full disk stops the consumer without losing or skipping anything; it
// retries with growing delays and resumes by itself once commits succeed.
func TestConsumerRetriesFailedCommitWithBackoff(t *testing.T) {
	var (
		full     atomic.Bool
		mu       sync.Mutex
		attempts []time.Time
	)
	full.Store(true)
	s, _ := mustOpen(t, &Options{failCommit: func() error {
		mu.Lock()
		attempts = append(attempts, time.Now())
		mu.Unlock()
		if full.Load() {
			return fmt.Errorf("write: %w", syscall.ENOSPC)
		}
		return nil
	}})
	log := newFakeLog()
	last := log.appendEvents(ev("t", "1", baseTime), ev("t", "2", baseTime), ev("t", "1", baseTime))
	const retryMin, retryMax = 2 * time.Millisecond, 40 * time.Millisecond
	c := startConsumer(t, s, log, &ConsumerOptions{RetryMin: retryMin, RetryMax: retryMax})
	poll.Until(t, 20*time.Second, "six failed attempts", func() bool { mu.Lock(); defer mu.Unlock(); return len(attempts) >= 6 })
	if err := c.Err(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Err() = %v, want ENOSPC", err)
	}
	if s.Checkpoint() != 0 || log.front() != 1 {
		t.Fatalf("checkpoint %d, log front %d while the disk is full", s.Checkpoint(), log.front())
	}
	full.Store(false)
	poll.Until(t, 20*time.Second, "recovery", func() bool { return s.Checkpoint() == last })
	if err := c.Err(); err != nil {
		t.Fatalf("Err() after recovery = %v", err)
	}
	if st := mustStats(t, s); st.Unique != 2 || st.Duplicates != 1 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	// Backoff doubles from retryMin: gaps are at least 2, 4, 8, 16 ms (timers
	// never fire early), and never wait beyond retryMax by design.
	want := retryMin
	for i := 1; i < 5; i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < want {
			t.Fatalf("gap %d = %v, want >= %v", i, gap, want)
		}
		want = min(want*2, retryMax)
	}
}

func TestConsumerRetriesFailedRead(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	log.readErr = errors.New("disk on fire")
	last := log.appendEvents(ev("t", "1", baseTime))
	c := startConsumer(t, s, log, &ConsumerOptions{RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond})
	poll.Until(t, 20*time.Second, "a failed read", func() bool { return c.Err() != nil })
	log.mu.Lock()
	log.readErr = nil
	log.mu.Unlock()
	poll.Until(t, 20*time.Second, "recovery", func() bool { return s.Checkpoint() == last })
}

func TestConsumerCloseHarmless(t *testing.T) {
	s, _ := mustOpen(t, nil)
	c := mustConsumer(t, s, newFakeLog(), nil)
	if err := c.Close(); err != nil { // never started
		t.Fatal(err)
	}
	c.Start() // after Close: does nothing
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := startConsumer(t, s, newFakeLog(), nil)
	c2.Start()
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
}

// The slow-consumer seam holds the consumer back.
func TestConsumerBeforeApplySeam(t *testing.T) {
	s, _ := mustOpen(t, nil)
	log := newFakeLog()
	gate := make(chan struct{})
	startConsumer(t, s, log, &ConsumerOptions{beforeApply: func(int) { <-gate }})
	last := log.appendEvents(ev("t", "1", baseTime))
	gate <- struct{}{} // the consumer reached the seam with the chunk
	poll.Until(t, 20*time.Second, "apply after the seam", func() bool { return s.Checkpoint() == last })
	close(gate)
}
