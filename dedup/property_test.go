package dedup

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/event"
)

// TestPropertyCrashInterleavings publishes new and duplicate events, crashes
// the consumer at random points (a failing commit, a stop between commit and
// log truncation, or an abrupt close) and reopens, in random order. After
// every reopen and at the end: unique == distinct keys in offsets
// 1..checkpoint and unique + duplicates == checkpoint.
func TestPropertyCrashInterleavings(t *testing.T) {
	seeds := 24
	if testing.Short() {
		seeds = 6
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runInterleaving(t, seed) })
	}
}

func runInterleaving(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	path := filepath.Join(t.TempDir(), "index.db")
	log := newFakeLog()
	var keys []string // key of each offset (offset = index+1)
	var (
		failCommits atomic.Bool
		failed      atomic.Int32
		stopAfter   atomic.Bool
		stopped     = make(chan struct{}, 1)
	)
	opts := &Options{ExpectedKeys: uint(8 + rng.IntN(64)), rebuildBatch: 1 + rng.IntN(20),
		fanout: 2 + rng.IntN(3), blockTarget: 16 + rng.IntN(200),
		noSync: true, // crashes here are in-process: durability is TestCrashPoints' job
		failCommit: func() error {
			if failCommits.Load() {
				failed.Add(1)
				return errors.New("injected commit failure")
			}
			return nil
		}}
	copts := &ConsumerOptions{ChunkEntries: 1 + rng.IntN(16), ChunkDelay: -1, RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond,
		afterApply: func(uint64) error {
			if stopAfter.CompareAndSwap(true, false) {
				stopped <- struct{}{}
				return errors.New("crash after commit")
			}
			return nil
		}}
	var check func(*Store)
	open := func() (*Store, *Consumer) {
		s, err := Open(path, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		check(s) // before the consumer moves on
		c := mustConsumer(t, s, log, copts)
		c.Start()
		return s, c
	}
	check = func(s *Store) {
		t.Helper()
		cp := s.Checkpoint()
		distinct := map[string]bool{}
		for _, k := range keys[:cp] {
			distinct[k] = true
		}
		st := mustStats(t, s)
		if st.Unique != uint64(len(distinct)) || st.Unique+st.Duplicates != cp || st.Checkpoint != cp {
			t.Fatalf("seed %d at checkpoint %d: %d distinct keys, stats %+v", seed, cp, len(distinct), st)
		}
		if got := listAll(t, s, "", 50); len(got) != len(distinct) {
			t.Fatalf("listed %d events, %d distinct", len(got), len(distinct))
		}
	}
	s, c := open()
	nextID := 0
	for op := range 60 {
		switch r := rng.IntN(10); {
		case r < 4: // publish new events
			var evs []event.Event
			for range 1 + rng.IntN(20) {
				topic := fmt.Sprintf("t%d", rng.IntN(3))
				id := fmt.Sprint(nextID)
				nextID++
				evs = append(evs, ev(topic, id, baseTime.Add(time.Duration(rng.IntN(1000))*time.Second)))
				keys = append(keys, topic+"/"+id)
			}
			log.appendEvents(evs...)
		case r < 7: // publish duplicates of published events (often repeated in one batch)
			if len(keys) == 0 {
				continue
			}
			var evs []event.Event
			for range 1 + rng.IntN(20) {
				var topic, id string
				k := keys[rng.IntN(len(keys))]
				fmt.Sscanf(k, "%2s/%s", &topic, &id)
				evs = append(evs, ev(topic, id, baseTime))
				keys = append(keys, k)
			}
			log.appendEvents(evs...)
		default: // crash and reopen
			switch rng.IntN(3) {
			case 0: // commits fail: crash before commit
				failCommits.Store(true)
				if s.Checkpoint() < log.last() {
					poll.Until(t, 20*time.Second, "a failed commit", func() bool { return failed.Load() > 0 || s.Checkpoint() == log.last() })
				}
			case 1: // crash after a commit, before truncation
				stopAfter.Store(true)
				if s.Checkpoint() < log.last() {
					select {
					case <-stopped:
					case <-time.After(20 * time.Second):
						t.Fatalf("op %d: consumer never committed", op)
					}
				}
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			failCommits.Store(false)
			failed.Store(0)
			stopAfter.Store(false)
			select {
			case <-stopped:
			default:
			}
			s, c = open()
		}
	}
	last := log.last()
	poll.Until(t, 20*time.Second, "the consumer to catch up", func() bool { return s.Checkpoint() == last })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
