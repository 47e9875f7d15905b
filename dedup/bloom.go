package dedup

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
)

// errRebuildStopped is returned by a rebuild that Close interrupted.
var errRebuildStopped = errors.New("rebuild stopped")

// guardedFilter is the bloom filter front with its lock. bloom.BloomFilter is
// not safe for concurrent use; every access goes through mu.
type guardedFilter struct {
	mu       sync.Mutex
	f        *bloom.BloomFilter
	capacity uint     // keys f was sized for
	pending  [][]byte // keys added while a rebuild runs; nil when none runs
}

func newGuardedFilter(f *bloom.BloomFilter, capacity uint) *guardedFilter {
	return &guardedFilter{f: f, capacity: capacity}
}

// capacityNow returns the number of keys the current filter was sized for.
func (g *guardedFilter) capacityNow() uint {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.capacity
}

// addAll adds committed keys, given with their hash locations; while a
// rebuild runs the keys are also kept for it.
func (g *guardedFilter) addAll(keys [][]byte, locs [][]uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range locs {
		addLocs(g.f, l)
	}
	if g.pending != nil {
		g.pending = append(g.pending, keys...)
	}
}

// sizes returns the size in bits, the number of hash functions and the
// analytic false-positive rate (1 - e^(-kn/m))^k with n stored keys. (The
// library's EstimateFalsePositiveRate is an empirical test that builds a
// second filter; far too slow for a stats call.)
func (g *guardedFilter) sizes(n uint64) (bits, k uint64, fp float64) {
	g.mu.Lock()
	m, kk := float64(g.f.Cap()), float64(g.f.K())
	bits, k = uint64(g.f.Cap()), uint64(g.f.K())
	g.mu.Unlock()
	return bits, k, math.Pow(1-math.Exp(-kk*float64(n)/m), kk)
}

// startGrow begins a rebuild of a filter for newCap keys unless one runs.
// The caller holds s.applyMu, so no commit happens between the start of the
// pending list and the first scan: every key is either scanned or replayed.
func (s *Store) startGrow(newCap uint) {
	if !s.growing.CompareAndSwap(false, true) {
		return
	}
	s.bloom.mu.Lock()
	s.bloom.pending = make([][]byte, 0, 1024)
	s.bloom.mu.Unlock()
	s.logger.Info("dedup: growing bloom filter", "keys", s.keys.Load(), "capacity", newCap)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.growing.Store(false)
		f, scanned, err := s.buildFilter(newCap, true)
		s.bloom.mu.Lock()
		defer s.bloom.mu.Unlock()
		pending := s.bloom.pending
		s.bloom.pending = nil
		if err != nil {
			if !errors.Is(err, errRebuildStopped) {
				s.logger.Error("dedup: grow bloom filter", "err", err)
			}
			return // the old filter still holds every key
		}
		for _, k := range pending {
			f.Add(k)
		}
		s.bloom.f, s.bloom.capacity = f, newCap
		s.frontAdded.Store(uint64(scanned + len(pending)))
	}()
}

// buildFilter makes a filter sized for capacity keys at the configured rate
// and adds every key of the seen set to it. It reads in global key order
// (merging the runs) in batches of short read transactions, so a long scan
// never holds up the writer's remap of the file; merges between batches do
// not matter, since a stored key stays stored in some run. Keys committed
// after the scan started may or may not be seen; grow replays them. grow
// selects the seam flag for tests.
func (s *Store) buildFilter(capacity uint, grow bool) (*bloom.BloomFilter, int, error) {
	f := s.newFilter(capacity)
	var (
		last    []byte // last key added, nil before the first
		scanned int
		done    bool
	)
	for !done {
		select {
		case <-s.stop:
			return nil, scanned, errRebuildStopped
		default:
		}
		err := s.db.View(func(tx *bolt.Tx) error {
			m, err := newRunMerger(tx, last)
			if err != nil {
				return err
			}
			for n := 0; n < s.opts.rebuildBatch; n++ {
				k, _ := m.next()
				if k == nil {
					done = true
					break
				}
				f.Add(k)
				scanned++
				last = k
			}
			last = bytes.Clone(last) // keys live in the mmap only during the transaction
			return nil
		})
		if err != nil {
			return nil, scanned, fmt.Errorf("scan seen keys: %w", err)
		}
		if s.opts.onRebuildStep != nil {
			if err := s.opts.onRebuildStep(scanned, grow); err != nil {
				return nil, scanned, err
			}
		}
	}
	return f, scanned, nil
}

// newFilter returns an empty filter for n keys at the configured rate. All
// filters of a Store share the number of hash functions s.k, so one
// bloom.Locations per key serves them all.
func (s *Store) newFilter(n uint) *bloom.BloomFilter {
	m, _ := bloom.EstimateParameters(max(n, 1), s.fpRate)
	return bloom.New(max(m, 64), s.k)
}

// openFilters builds, in one pass over the seen set, the front filter for
// capacity keys and the filter of every run. It runs in Open, before any
// Apply, so a single read transaction is fine.
func (s *Store) openFilters(capacity uint) (*bloom.BloomFilter, int, error) {
	front := s.newFilter(capacity)
	scanned := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		for i := range s.runs {
			r := &s.runs[i]
			b := seen.Bucket(runName(r.id))
			if b == nil {
				return fmt.Errorf("run %d missing", r.id)
			}
			r.f = s.newFilter(uint(r.n))
			it := &runIter{c: b.Cursor()}
			for it.seek(nil); it.key() != nil; it.advance() {
				locs := bloom.Locations(it.key(), s.k)
				addLocs(front, locs)
				addLocs(r.f, locs)
				scanned++
				if s.opts.onRebuildStep != nil && scanned%s.opts.rebuildBatch == 0 {
					if err := s.opts.onRebuildStep(scanned, false); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, scanned, fmt.Errorf("scan seen keys: %w", err)
	}
	return front, scanned, nil
}
