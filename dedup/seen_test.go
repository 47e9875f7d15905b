package dedup

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
)

// With tiny blocks and fanout 2, many runs are written and merged; every
// lookup, merge and ordered scan must agree with a plain map.
func TestSeenSetRunsBlocksAndMerges(t *testing.T) {
	opts := &Options{ExpectedKeys: 32, fanout: 2, blockTarget: 40}
	s, path := mustOpen(t, opts)
	rng := rand.New(rand.NewPCG(5, 6))
	model := map[string]bool{}
	off := uint64(1)
	for round := range 60 {
		var evs []event.Event
		wantNew := 0
		inChunk := map[string]bool{}
		for range 1 + rng.IntN(40) {
			id := fmt.Sprint(rng.IntN(1500))
			k := "t/" + id
			if !model[k] && !inChunk[k] {
				wantNew++
			}
			inChunk[k] = true
			evs = append(evs, ev("t", id, baseTime))
		}
		res := mustApply(t, s, entries(off, evs...))
		off += uint64(len(evs))
		if res.Unique != wantNew || res.Duplicates != len(evs)-wantNew {
			t.Fatalf("round %d: %+v, want %d new of %d", round, res, wantNew, len(evs))
		}
		for k := range inChunk {
			model[k] = true
		}
		if len(s.runs) > 2*12 {
			t.Fatalf("%d runs for %d keys with fanout 2", len(s.runs), len(model))
		}
	}
	var want [][]byte
	for k := range model {
		want = append(want, appendSeenKey(nil, "t", k[2:]))
	}
	slices.SortFunc(want, bytes.Compare)
	checkScan := func(s *Store) {
		t.Helper()
		err := s.db.View(func(tx *bolt.Tx) error {
			for _, from := range []int{-1, 0, 1, len(want) / 3, len(want) - 2, len(want) - 1} {
				var after []byte
				if from >= 0 {
					after = want[from]
				}
				m, err := newRunMerger(tx, after)
				if err != nil {
					return err
				}
				for i := from + 1; i <= len(want); i++ {
					k, _ := m.next()
					if i == len(want) {
						if k != nil {
							t.Fatalf("scan after %d: extra key %q", from, k)
						}
						break
					}
					if !bytes.Equal(k, want[i]) {
						t.Fatalf("scan after %d: key %d = %q, want %q", from, i, k, want[i])
					}
				}
				// A key that is not stored, between two stored ones.
				if from >= 0 {
					between := append(bytes.Clone(want[from]), 0)
					m, _ := newRunMerger(tx, between)
					if k, _ := m.next(); from+1 < len(want) && !bytes.Equal(k, want[from+1]) {
						t.Fatalf("scan after %q: got %q, want %q", between, k, want[from+1])
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if st := mustStats(t, s); st.Keys != uint64(len(model)) || st.Unique != uint64(len(model)) ||
			st.SeenRuns != len(s.runs) || st.RunFilterBits < uint64(len(model)) {
			t.Fatalf("stats %+v, %d keys", st, len(model))
		}
	}
	checkScan(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, opts)
	checkScan(s)
	// Everything stored is a duplicate after reopen, and lookups hit runs.
	var evs []event.Event
	for k := range model {
		evs = append(evs, ev("t", k[2:], baseTime.Add(time.Second)))
	}
	if res := mustApply(t, s, entries(off, evs...)); res.Duplicates != len(model) || res.Unique != 0 {
		t.Fatalf("re-publish: %+v", res)
	}
}

func TestBlockSearch(t *testing.T) {
	var keys [][]byte
	for i := range 50 {
		keys = append(keys, []byte(fmt.Sprintf("k%03d", i*2)))
	}
	var (
		offs []uint32
		seqs []uint64
		data []byte
	)
	for i, k := range keys {
		offs = append(offs, uint32(len(data)))
		seqs = append(seqs, uint64(1000+i))
		data = append(data, k...)
	}
	v := encodeBlock(offs, seqs, data)
	for i := range 100 {
		k := []byte(fmt.Sprintf("k%03d", i))
		idx, found := blockSearch(v, k)
		if found != (i%2 == 0) || idx != (i+1)/2 {
			t.Fatalf("search %s: %d %v", k, idx, found)
		}
		if found && (blockSeq(v, idx) != uint64(1000+i/2) || !bytes.Equal(blockKey(v, idx), k)) {
			t.Fatalf("key %d: seq %d, key %q", idx, blockSeq(v, idx), blockKey(v, idx))
		}
	}
	if idx, found := blockSearch(v, []byte("z")); found || idx != 50 {
		t.Fatalf("past the end: %d %v", idx, found)
	}
}

// Merges stop at maxMergeKeys: no run grows past it, and every key is still
// found (a duplicate names its seq) among the runs left unmerged.
func TestMergeBound(t *testing.T) {
	s, _ := mustOpen(t, &Options{ExpectedKeys: 32, fanout: 2, blockTarget: 40, maxMergeKeys: 60})
	off := uint64(1)
	for round := range 50 {
		var evs []event.Event
		for i := range 10 {
			evs = append(evs, ev("t", fmt.Sprintf("%d-%d", round, i), baseTime))
		}
		mustApply(t, s, entries(off, evs...))
		off += 10
	}
	for _, r := range s.runs {
		if r.n > 60 {
			t.Fatalf("a run of %d keys, bound 60 (runs %d)", r.n, len(s.runs))
		}
	}
	if len(s.runs) < 500/60 {
		t.Fatalf("%d runs for 500 keys with runs of at most 60", len(s.runs))
	}
	again := []event.Event{ev("t", "0-0", baseTime), ev("t", "49-9", baseTime), ev("t", "25-5", baseTime)}
	res := mustApply(t, s, entries(off, again...))
	if res.Duplicates != 3 {
		t.Fatalf("resent keys: %+v", res)
	}
	v, err := s.Verdicts(off, off+2, again)
	if err != nil {
		t.Fatal(err)
	}
	s.verdicts.init(verdictRingSize)
	w, err := s.Verdicts(off, off+2, again)
	if err != nil || fmt.Sprint(v) != fmt.Sprint(w) || v[0].Seq != 1 || v[1].Seq != 500 || v[2].Seq != 256 {
		t.Fatalf("verdicts from memory %v, from the runs %v (%v)", v, w, err)
	}
}
