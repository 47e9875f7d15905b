package dedup

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
)

func TestApplyCountsAndStores(t *testing.T) {
	s, _ := mustOpen(t, nil)
	res := mustApply(t, s, entries(1,
		ev("a", "1", baseTime), ev("a", "2", baseTime), ev("a", "1", baseTime.Add(time.Hour)), // dup in chunk
		ev("b", "1", baseTime), // same id, other topic: new
	))
	if res.Unique != 3 || res.Duplicates != 1 || res.Checkpoint != 4 {
		t.Fatalf("first chunk: %+v", res)
	}
	res = mustApply(t, s, entries(5, ev("b", "1", baseTime), ev("c", "9", baseTime)))
	if res.Unique != 1 || res.Duplicates != 1 || res.Checkpoint != 6 {
		t.Fatalf("second chunk: %+v", res)
	}
	st := mustStats(t, s)
	if st.Unique != 4 || st.Duplicates != 2 || st.Checkpoint != 6 || st.Keys != 4 || st.Malformed != 0 {
		t.Fatalf("stats: %+v", st)
	}
	topics, more, err := s.Topics("", 10)
	if want := "[{a 2} {b 1} {c 1}]"; err != nil || more || fmt.Sprint(topics) != want || st.TopicCount != 3 {
		t.Fatalf("topics %v (more %v, err %v, count %d), want %v", topics, more, err, st.TopicCount, want)
	}
	if page, more, _ := s.Topics("a", 1); fmt.Sprint(page) != "[{b 1}]" || !more {
		t.Fatalf("topics after a, limit 1: %v more %v", page, more)
	}
	if st.LastSeq != 4 {
		t.Fatalf("last seq %d, want 4", st.LastSeq)
	}
	if s.Checkpoint() != 6 {
		t.Fatalf("Checkpoint() = %d", s.Checkpoint())
	}
	// The first occurrence wins: a/1 is the event at offset 1.
	got := listAll(t, s, "a", 10)
	if len(got) != 2 || got[0].EventID != "1" || got[0].Offset != 1 || got[1].EventID != "2" {
		t.Fatalf("topic a: %+v", got)
	}
	want := ev("a", "1", baseTime)
	if g := got[0]; g.Source != want.Source || !bytes.Equal(g.Payload, want.Payload) || !g.Timestamp.Equal(want.Timestamp) {
		t.Fatalf("stored event %+v, want %+v", g, want)
	}
}

func TestApplySkipsAppliedAndRejectsGaps(t *testing.T) {
	s, _ := mustOpen(t, nil)
	mustApply(t, s, entries(1, ev("t", "1", baseTime), ev("t", "2", baseTime)))
	// A replay overlapping the checkpoint applies only the new tail.
	res := mustApply(t, s, entries(1, ev("t", "1", baseTime), ev("t", "2", baseTime), ev("t", "3", baseTime)))
	if res.Skipped != 2 || res.Unique != 1 || res.Duplicates != 0 || res.Checkpoint != 3 {
		t.Fatalf("overlapping replay: %+v", res)
	}
	res = mustApply(t, s, entries(2, ev("t", "2", baseTime)))
	if res.Skipped != 1 || res.Unique != 0 || res.Checkpoint != 3 {
		t.Fatalf("full replay: %+v", res)
	}
	for name, es := range map[string][]Entry{
		"gap after checkpoint": entries(5, ev("t", "5", baseTime)),
		"hole inside":          {{Offset: 4, Event: ev("t", "4", baseTime)}, {Offset: 6, Event: ev("t", "6", baseTime)}},
		"backwards":            {{Offset: 4, Event: ev("t", "4", baseTime)}, {Offset: 3, Event: ev("t", "3", baseTime)}},
	} {
		if _, err := s.Apply(es); !errors.Is(err, ErrOutOfOrder) {
			t.Errorf("%s: err = %v, want ErrOutOfOrder", name, err)
		}
	}
	if st := mustStats(t, s); st.Checkpoint != 3 || st.Unique != 3 {
		t.Fatalf("rejected chunks changed state: %+v", st)
	}
}

func TestApplyMalformed(t *testing.T) {
	s, _ := mustOpen(t, nil)
	res := mustApply(t, s, entries(1, ev("", "1", baseTime), ev("t", "", baseTime), event.Event{}, ev("t", "1", baseTime)))
	if res.Malformed != 3 || res.Unique != 1 || res.Checkpoint != 4 {
		t.Fatalf("%+v", res)
	}
	st := mustStats(t, s)
	if st.Unique+st.Duplicates+st.Malformed != st.Checkpoint {
		t.Fatalf("counters do not add up: %+v", st)
	}
}

func TestReopenKeepsStateAndFilter(t *testing.T) {
	s, path := mustOpen(t, &Options{ExpectedKeys: 100})
	var evs []event.Event
	for i := range 300 {
		evs = append(evs, ev(fmt.Sprintf("t%d", i%3), fmt.Sprint(i), baseTime.Add(time.Duration(i)*time.Second)))
	}
	mustApply(t, s, entries(1, evs...))
	before := mustStats(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{ExpectedKeys: 100})
	after := mustStats(t, s)
	durable := func(st Stats) string {
		st.BloomBits, st.BloomK, st.BloomFPEstimate = 0, 0, 0 // the filter may have grown meanwhile
		return fmt.Sprint(st)
	}
	if durable(before) != durable(after) {
		t.Fatalf("stats changed over reopen:\n%+v\n%+v", before, after)
	}
	// Every stored key is in the rebuilt filter, so publishing them all again
	// counts only duplicates.
	res := mustApply(t, s, entries(301, evs...))
	if res.Unique != 0 || res.Duplicates != 300 {
		t.Fatalf("re-publish after reopen: %+v", res)
	}
	// The filter was sized for twice the stored keys at open.
	if after.BloomBits < 600*8 {
		t.Fatalf("bloom bits %d for 300 keys", after.BloomBits)
	}
}

// Filters that say "maybe" to everything must still store every new key.
func TestSaturatedFiltersStillStoreNewKeys(t *testing.T) {
	s, _ := mustOpen(t, &Options{ExpectedKeys: 1, FalsePositiveRate: 0.5, blockTarget: 30})
	mustApply(t, s, entries(1, ev("t", "a", baseTime), ev("t", "b", baseTime), ev("t", "c", baseTime)))
	mustApply(t, s, entries(4, ev("t", "x", baseTime), ev("t", "y", baseTime)))
	s.bloom.mu.Lock()
	s.bloom.f.BitSet().ClearAll().FlipRange(0, s.bloom.f.Cap()) // all ones: every Test is positive
	s.bloom.capacity = 1 << 30                                  // and no growth replaces it
	s.bloom.mu.Unlock()
	for _, r := range s.runs {
		r.f.BitSet().ClearAll().FlipRange(0, r.f.Cap())
	}
	var evs []event.Event
	for i := range 50 {
		evs = append(evs, ev("t", fmt.Sprint(i%40), baseTime))
	}
	evs = append(evs, ev("t", "b", baseTime), ev("t", "y", baseTime), ev("t", "bb", baseTime))
	res := mustApply(t, s, entries(6, evs...))
	if res.Unique != 41 || res.Duplicates != 12 {
		t.Fatalf("%+v", res)
	}
}

func TestFilterGrowsWhenOutgrown(t *testing.T) {
	s, _ := mustOpen(t, &Options{ExpectedKeys: 64, FalsePositiveRate: 0.01, rebuildBatch: 7})
	startBits := mustStats(t, s).BloomBits
	off := uint64(1)
	var all []event.Event
	for round := range 20 {
		var evs []event.Event
		for i := range 50 {
			evs = append(evs, ev("t", fmt.Sprintf("%d-%d", round, i), baseTime))
		}
		all = append(all, evs...)
		mustApply(t, s, entries(off, evs...))
		off += uint64(len(evs))
	}
	poll.Until(t, 20*time.Second, "the rebuild to finish", func() bool { return !s.growing.Load() })
	st := mustStats(t, s)
	if st.BloomBits <= startBits {
		t.Fatalf("filter did not grow: %d bits at %d keys (was %d)", st.BloomBits, st.Keys, startBits)
	}
	if st.BloomFPEstimate > 0.05 {
		t.Fatalf("fp estimate %.4f after growth, want near 0.01", st.BloomFPEstimate)
	}
	s.bloom.mu.Lock()
	for _, e := range all {
		if !s.bloom.f.Test(appendSeenKey(nil, e.Topic, e.EventID)) {
			s.bloom.mu.Unlock()
			t.Fatalf("grown filter lacks %s/%s", e.Topic, e.EventID)
		}
	}
	s.bloom.mu.Unlock()
}

// Keys committed while a rebuild scans must reach the new filter.
func TestGrowReplaysKeysCommittedDuringRebuild(t *testing.T) {
	inRebuild, release := make(chan struct{}), make(chan struct{})
	opts := &Options{ExpectedKeys: 16, rebuildBatch: 4, onRebuildStep: func(scanned int, grow bool) error {
		if grow && scanned == 4 {
			close(inRebuild)
			<-release
		}
		return nil
	}}
	s, _ := mustOpen(t, opts)
	var first []event.Event
	for i := range 40 {
		first = append(first, ev("t", fmt.Sprint(i), baseTime))
	}
	mustApply(t, s, entries(1, first...)) // 40 > 16: starts a rebuild
	<-inRebuild
	var during []event.Event
	for i := range 30 {
		during = append(during, ev("u", fmt.Sprint(i), baseTime))
	}
	mustApply(t, s, entries(41, during...))
	close(release)
	poll.Until(t, 20*time.Second, "the rebuild to finish", func() bool { return !s.growing.Load() })
	s.bloom.mu.Lock()
	defer s.bloom.mu.Unlock()
	if s.bloom.capacity != 80 {
		t.Fatalf("capacity %d, want 80", s.bloom.capacity)
	}
	for _, e := range append(first, during...) {
		if !s.bloom.f.Test(appendSeenKey(nil, e.Topic, e.EventID)) {
			t.Fatalf("new filter lacks %s/%s", e.Topic, e.EventID)
		}
	}
}

// Close interrupts a running rebuild, and the next Open builds a full filter.
func TestCloseDuringRebuild(t *testing.T) {
	inRebuild := make(chan struct{})
	var once bool
	opts := &Options{ExpectedKeys: 8, rebuildBatch: 2, onRebuildStep: func(scanned int, grow bool) error {
		if grow && !once {
			once = true
			close(inRebuild)
		}
		return nil
	}}
	s, path := mustOpen(t, opts)
	var evs []event.Event
	for i := range 100 {
		evs = append(evs, ev("t", fmt.Sprint(i), baseTime))
	}
	mustApply(t, s, entries(1, evs...))
	<-inRebuild
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{ExpectedKeys: 8})
	if res := mustApply(t, s, entries(101, evs...)); res.Duplicates != 100 {
		t.Fatalf("after reopen: %+v", res)
	}
}

func TestFailCommitChangesNothing(t *testing.T) {
	var fail bool
	s, _ := mustOpen(t, &Options{failCommit: func() error {
		if fail {
			return fmt.Errorf("write page: %w", syscall.ENOSPC)
		}
		return nil
	}})
	mustApply(t, s, entries(1, ev("t", "1", baseTime)))
	before := mustStats(t, s)
	fail = true
	chunk := entries(2, ev("t", "2", baseTime), ev("t", "1", baseTime))
	if _, err := s.Apply(chunk); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Apply with full disk: err = %v, want ENOSPC", err)
	}
	if after := mustStats(t, s); fmt.Sprint(before) != fmt.Sprint(after) || s.Checkpoint() != 1 {
		t.Fatalf("failed commit changed state:\n%+v\n%+v", before, after)
	}
	s.bloom.mu.Lock()
	inFilter := s.bloom.f.Test(appendSeenKey(nil, "t", "2"))
	s.bloom.mu.Unlock()
	if inFilter {
		t.Fatal("key of a failed commit was added to the filter")
	}
	fail = false
	if res := mustApply(t, s, chunk); res.Unique != 1 || res.Duplicates != 1 || res.Checkpoint != 3 {
		t.Fatalf("retry: %+v", res)
	}
}

func TestSecondOpenFailsFastWithErrLocked(t *testing.T) {
	_, path := mustOpen(t, nil)
	start := time.Now()
	s2, err := Open(path, &Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		_ = s2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("err = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("second Open took %v", d)
	}
}

func TestOpenRejectsOtherFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		return b.Put(metaVersion, putU64(99))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path, nil); !errors.Is(err, ErrFormat) {
		if s != nil {
			_ = s.Close()
		}
		t.Fatalf("err = %v, want ErrFormat", err)
	}
}

func TestClosedStore(t *testing.T) {
	s, _ := mustOpen(t, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Apply(entries(1, ev("t", "1", baseTime))); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply: %v", err)
	}
	if _, err := s.List(event.ListQuery{}); !errors.Is(err, ErrClosed) {
		t.Errorf("List: %v", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats: %v", err)
	}
}

func TestSeenKeysUnambiguous(t *testing.T) {
	pairs := [][2]string{{"a", "bc"}, {"ab", "c"}, {"abc", ""}, {"a\x00", "b"}, {"a", "\x00b"}, {"\x01a", "b"}, {"", "\x01ab"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		k := string(appendSeenKey(nil, p[0], p[1]))
		if q, dup := seen[k]; dup {
			t.Fatalf("%q and %q share key %x", p, q, k)
		}
		seen[k] = p
	}
}

func TestIdxKeyOrderMatchesTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lo := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	hi := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
	type item struct {
		ts  time.Time
		off uint64
		key []byte
	}
	items := []item{}
	add := func(ts time.Time, off uint64) {
		items = append(items, item{ts, off, appendIdxKey(nil, ts, off)})
	}
	add(time.Unix(lo, 0).UTC(), 1)
	add(time.Unix(hi, 999999999).UTC(), 1)
	add(time.Unix(0, 0).UTC(), 1)
	add(time.Unix(-1, 999999999).UTC(), 1)
	for range 2000 {
		ts := time.Unix(lo+rng.Int64N(hi-lo), rng.Int64N(1e9)).UTC()
		add(ts, rng.Uint64())
		add(ts, rng.Uint64N(10))
	}
	byKey := slices.Clone(items)
	slices.SortFunc(byKey, func(a, b item) int { return bytes.Compare(a.key, b.key) })
	for i := 1; i < len(byKey); i++ {
		a, b := byKey[i-1], byKey[i]
		if a.ts.After(b.ts) || (a.ts.Equal(b.ts) && a.off > b.off) {
			t.Fatalf("key order breaks time order: %v/%d before %v/%d", a.ts, a.off, b.ts, b.off)
		}
	}
	for _, it := range items {
		ts, off, ok := parseIdxKey(it.key)
		if !ok || !ts.Equal(it.ts) || off != it.off {
			t.Fatalf("parse %x: %v %d %v, want %v %d", it.key, ts, off, ok, it.ts, it.off)
		}
	}
}
