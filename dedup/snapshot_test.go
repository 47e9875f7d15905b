package dedup

import (
	"fmt"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
)

// crashClose closes the database the way a crash leaves it: no snapshot.
func crashClose(tb testing.TB, s *Store) {
	tb.Helper()
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		s.applyMu.Lock()
		defer s.applyMu.Unlock()
		s.wg.Wait()
		if err := s.db.Close(); err != nil {
			tb.Fatal(err)
		}
	})
}

func numbered(topic string, from, n int) []event.Event {
	var evs []event.Event
	for i := from; i < from+n; i++ {
		evs = append(evs, ev(topic, fmt.Sprint(i), baseTime.Add(time.Duration(i)*time.Second)))
	}
	return evs
}

func TestFilterSnapshot(t *testing.T) {
	opts := &Options{ExpectedKeys: 1000, fanout: 3, blockTarget: 64}
	s, path := mustOpen(t, opts)
	first := numbered("a", 0, 400)
	for i := 0; i < len(first); i += 50 {
		mustApply(t, s, entries(uint64(i+1), first[i:i+50]...))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Clean close: the snapshot is used and holds every key.
	s = mustOpenPath(t, path, opts)
	if s.filtersFrom != "snapshot" {
		t.Fatalf("filters from %s after a clean close", s.filtersFrom)
	}
	for _, e := range first {
		k := appendSeenKey(nil, e.Topic, e.EventID)
		found := false
		for _, r := range s.runs {
			found = found || r.f.Test(k)
		}
		if !s.bloom.f.Test(k) || !found {
			t.Fatalf("snapshot filters lack %s", e.EventID)
		}
	}
	second := numbered("b", 0, 100)
	mustApply(t, s, entries(401, second...))
	crashClose(t, s)

	// After a crash the snapshot is stale (older checkpoint): scan.
	s = mustOpenPath(t, path, opts)
	if s.filtersFrom != "scan" {
		t.Fatalf("filters from %s after a crash", s.filtersFrom)
	}
	res := mustApply(t, s, entries(501, append(first, second...)...))
	if res.Unique != 0 || res.Duplicates != 500 {
		t.Fatalf("re-publish after crash: %+v", res)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A damaged snapshot is not used.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFilters)
		v := append([]byte(nil), b.Get(snapFront)...)
		v[20] ^= 0xff
		return b.Put(snapFront, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, opts)
	if s.filtersFrom != "scan" {
		t.Fatalf("filters from %s with a damaged snapshot", s.filtersFrom)
	}
	if res := mustApply(t, s, entries(1001, first[:10]...)); res.Duplicates != 10 {
		t.Fatalf("after damaged snapshot: %+v", res)
	}
}
