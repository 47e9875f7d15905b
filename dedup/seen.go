package dedup

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
)

// The seen set is a small log-structured merge tree inside bbolt. Keys are
// random, so inserting them one by one into a big B+tree would rewrite most
// of its leaf pages at every commit. Instead each chunk writes its new keys,
// sorted, as a new run: a nested bucket of the seen bucket holding sorted
// blocks of keys (bbolt key = the block's first key, value = the block), so
// writing a run costs one Put per block. Runs of one size tier are merged,
// block by block, once `fanout` of them exist, so there are
// O(fanout * log_fanout(keys)) runs and every key is rewritten
// O(log_fanout(keys)) times, each time as a sequential copy. Every run also
// has an in-memory bloom filter of exactly its keys, so a lookup (made only
// after a positive of the front filter) reads only the runs that may hold the
// key: in practice one. Every change to the runs (a new run, merges, their
// sizes in the runs bucket) happens in the chunk's transaction.
const (
	defaultFanout = 16
	// defaultMaxMergeKeys bounds the run a merge writes (see compact).
	defaultMaxMergeKeys = 1 << 20
	defaultBlockTarget  = 16 << 10 // key bytes per block before it is cut
	// maxKeyLen bounds len(seen key) (about topic + event ID); longer
	// entries are counted as malformed. bbolt keys must stay below 32 KiB.
	maxKeyLen = 8 << 10
)

// Block layout: n (uint32), n key start offsets into the data area (uint32
// each), n seqs (uint64 each: the seq of the event each key was first stored
// with), then the n keys back to back, ascending.

// blockKey returns the i-th key of block b.
func blockKey(b []byte, i int) []byte {
	n := int(binary.BigEndian.Uint32(b))
	data := b[4+12*n:]
	start := binary.BigEndian.Uint32(b[4+4*i:])
	end := uint32(len(data))
	if i+1 < n {
		end = binary.BigEndian.Uint32(b[4+4*(i+1):])
	}
	return data[start:end]
}

// blockSeq returns the seq of the i-th key of block b.
func blockSeq(b []byte, i int) uint64 {
	n := int(binary.BigEndian.Uint32(b))
	return binary.BigEndian.Uint64(b[4+4*n+8*i:])
}

func blockLen(b []byte) int {
	if len(b) < 4 {
		return 0
	}
	return int(binary.BigEndian.Uint32(b))
}

// blockSearch returns the index of the first key >= k and whether it equals k.
func blockSearch(b []byte, k []byte) (int, bool) {
	n := blockLen(b)
	lo, hi := 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if bytes.Compare(blockKey(b, mid), k) < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, lo < n && bytes.Equal(blockKey(b, lo), k)
}

// runWriter cuts ascending keys into blocks and puts them into a run bucket.
type runWriter struct {
	b      *bolt.Bucket
	target int // block size
	f      *bloom.BloomFilter
	offs   []uint32
	seqs   []uint64
	data   []byte
	first  []byte
	n      uint64
	span   runSpan // apply times of the keys
}

func (w *runWriter) add(k []byte, seq uint64) error {
	if len(w.offs) == 0 {
		w.first = append(w.first[:0], k...)
	}
	w.offs = append(w.offs, uint32(len(w.data)))
	w.seqs = append(w.seqs, seq)
	w.data = append(w.data, k...)
	w.n++
	if len(w.data) >= w.target {
		return w.flush()
	}
	return nil
}

func (w *runWriter) flush() error {
	if len(w.offs) == 0 {
		return nil
	}
	// bbolt keeps the value until the commit: a fresh buffer per block.
	v := encodeBlock(w.offs, w.seqs, w.data)
	if err := w.b.Put(w.first, v); err != nil {
		return fmt.Errorf("put seen block: %w", err)
	}
	w.offs, w.seqs, w.data = w.offs[:0], w.seqs[:0], w.data[:0]
	return nil
}

// encodeBlock returns a block of the keys in data that start at offs, with
// their seqs.
func encodeBlock(offs []uint32, seqs []uint64, data []byte) []byte {
	n := len(offs)
	v := make([]byte, 4+12*n+len(data))
	binary.BigEndian.PutUint32(v, uint32(n))
	for i, o := range offs {
		binary.BigEndian.PutUint32(v[4+4*i:], o)
		binary.BigEndian.PutUint64(v[4+4*n+8*i:], seqs[i])
	}
	copy(v[4+12*n:], data)
	return v
}

// runInfo is one sorted run: its bucket name (id), number of keys, the
// apply times of its oldest and newest keys and, in memory only, a bloom
// filter of exactly its keys.
type runInfo struct {
	id uint64
	n  uint64
	runSpan
	f *bloom.BloomFilter
}

// runSpan is the range of apply times (Unix nanoseconds) of a run's keys.
type runSpan struct {
	oldest, newest int64
}

// union returns the span of two runs merged.
func (a runSpan) union(b runSpan) runSpan {
	return runSpan{oldest: min(a.oldest, b.oldest), newest: max(a.newest, b.newest)}
}

// Run entry (the runs bucket): number of keys, then the apply times of the
// oldest and the newest key (int64 Unix nanoseconds), all big-endian. An
// entry of only the number of keys was written by a version that did not
// keep the times: its oldest time is unknown (0) and its newest is taken to
// be the time of the Open (later than the truth: the dedup window never
// drops it too early).
const (
	runEntryLen    = 24
	oldRunEntryLen = 8
)

func encodeRunEntry(r runInfo) []byte {
	v := make([]byte, 0, runEntryLen)
	v = binary.BigEndian.AppendUint64(v, r.n)
	v = binary.BigEndian.AppendUint64(v, uint64(r.oldest))
	return binary.BigEndian.AppendUint64(v, uint64(r.newest))
}

// probeRun is a run opened in a transaction.
type probeRun struct {
	b *bolt.Bucket
	f *bloom.BloomFilter
}

// addLocs sets the bits of precomputed hash locations (bloom.Locations with
// the filter's K): the same bits Add would set.
func addLocs(f *bloom.BloomFilter, locs []uint64) {
	bits, m := f.BitSet(), uint64(f.Cap())
	for _, l := range locs {
		bits.Set(uint(l % m))
	}
}

func runName(id uint64) []byte { return putU64(id) }

// loadRuns reads the run list, oldest first; opened is the time of the
// Open, the newest apply time of a run whose entry holds none.
func loadRuns(tx *bolt.Tx, opened int64) ([]runInfo, error) {
	var runs []runInfo
	err := tx.Bucket(bucketRuns).ForEach(func(k, v []byte) error {
		if len(k) != 8 || (len(v) != runEntryLen && len(v) != oldRunEntryLen) {
			return fmt.Errorf("bad run entry %x", k)
		}
		r := runInfo{id: u64(k), n: u64(v[:8]), runSpan: runSpan{newest: opened}}
		if len(v) == runEntryLen {
			r.oldest, r.newest = int64(binary.BigEndian.Uint64(v[8:])), int64(binary.BigEndian.Uint64(v[16:]))
		}
		runs = append(runs, r)
		return nil
	})
	return runs, err
}

// probeOrder opens the run buckets, largest first.
func probeOrder(tx *bolt.Tx, runs []runInfo) ([]probeRun, error) {
	sorted := slices.Clone(runs)
	slices.SortStableFunc(sorted, func(a, b runInfo) int {
		switch {
		case a.n > b.n:
			return -1
		case a.n < b.n:
			return 1
		}
		return 0
	})
	seen := tx.Bucket(bucketSeen)
	out := make([]probeRun, len(sorted))
	for i, r := range sorted {
		if out[i].b = seen.Bucket(runName(r.id)); out[i].b == nil {
			return nil, fmt.Errorf("run %d missing", r.id)
		}
		out[i].f = r.f
	}
	return out, nil
}

// runFind returns the seq stored with key k in run bucket b, and whether k
// is there.
func runFind(b *bolt.Bucket, k []byte) (uint64, bool) {
	c := b.Cursor()
	bk, bv := c.Seek(k)
	if bk != nil && bytes.Equal(bk, k) {
		return blockSeq(bv, 0), true
	}
	if bk == nil {
		_, bv = c.Last()
	} else {
		_, bv = c.Prev()
	}
	if bv == nil {
		return 0, false
	}
	i, ok := blockSearch(bv, k)
	if !ok {
		return 0, false
	}
	return blockSeq(bv, i), true
}

// inRuns returns the seq k is stored with, and whether it is stored,
// reading only the runs whose own filter may hold it.
func inRuns(probe []probeRun, k []byte, locs []uint64) (uint64, bool) {
	for _, r := range probe {
		if r.f.TestLocations(locs) {
			if seq, ok := runFind(r.b, k); ok {
				return seq, true
			}
		}
	}
	return 0, false
}

// newRun creates the bucket of run id, whose keys were applied in span,
// and a writer for it.
func (s *Store) newRun(tx *bolt.Tx, id uint64, keys uint64, span runSpan) (*runWriter, error) {
	b, err := tx.Bucket(bucketSeen).CreateBucket(runName(id))
	if err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	b.FillPercent = 1.0 // blocks arrive in key order: fill pages completely
	return &runWriter{b: b, target: s.opts.blockTarget, f: s.newFilter(uint(keys)), span: span}, nil
}

// finishRun flushes w and records run id with its size and span.
func finishRun(tx *bolt.Tx, w *runWriter, id uint64) (runInfo, error) {
	if err := w.flush(); err != nil {
		return runInfo{}, err
	}
	r := runInfo{id: id, n: w.n, runSpan: w.span, f: w.f}
	if err := tx.Bucket(bucketRuns).Put(runName(id), encodeRunEntry(r)); err != nil {
		return runInfo{}, fmt.Errorf("write run entry: %w", err)
	}
	return r, nil
}

// writeRun stores the chunk's new keys (c.fresh is in key order) as run id.
func (s *Store) writeRun(tx *bolt.Tx, c *chunk, id uint64) (runInfo, error) {
	w, err := s.newRun(tx, id, uint64(len(c.fresh)), runSpan{oldest: c.appliedAt, newest: c.appliedAt})
	if err != nil {
		return runInfo{}, err
	}
	for _, i := range c.fresh {
		if err := w.add(c.keys[i], c.seqs[i]); err != nil {
			return runInfo{}, err
		}
		addLocs(w.f, c.locs[i])
	}
	return finishRun(tx, w, id)
}

// tier is floor(log_fanout(n)): runs whose sizes are within a factor fanout
// of each other share a tier.
func tier(n uint64, fanout int) int {
	t := 0
	for x := uint64(fanout); n >= x; x *= uint64(fanout) {
		t++
	}
	return t
}

// compact merges the newest runs while `fanout` of them share a tier (or
// are below it), and, with a dedup window, an epoch of the window (see
// epochOf), as long as the merged run would hold at most maxMergeKeys keys.
// It returns the new run list and next run id.
//
// The bound keeps every merge, which is written in one transaction with a
// chunk, to a bounded number of dirty pages in memory (about 30 MB at 1M
// keys): past it, runs are left as they are, and a large index is a few
// dozen runs of up to maxMergeKeys keys, each with its own bloom filter, so
// that a lookup still reads about one run.
func (s *Store) compact(tx *bolt.Tx, runs []runInfo, nextID uint64) ([]runInfo, uint64, error) {
	fanout := s.opts.fanout
	for {
		n := len(runs)
		if n < fanout {
			return runs, nextID, nil
		}
		t := tier(runs[n-1].n, fanout)
		epoch, ok := s.epochOf(runs[n-1].runSpan)
		j := n - 1
		for j > 0 && tier(runs[j-1].n, fanout) <= t && ok {
			if e, ok := s.epochOf(runs[j-1].runSpan); !ok || e != epoch {
				break
			}
			j--
		}
		if n-j < fanout {
			return runs, nextID, nil
		}
		var total uint64
		for _, r := range runs[j:] {
			total += r.n
		}
		if total > uint64(s.opts.maxMergeKeys) {
			return runs, nextID, nil
		}
		merged, err := s.mergeRuns(tx, runs[j:], nextID)
		if err != nil {
			return nil, 0, err
		}
		runs = append(runs[:j:j], merged)
		nextID++
	}
}

// mergeRuns writes the union of runs as run id and deletes them.
func (s *Store) mergeRuns(tx *bolt.Tx, runs []runInfo, id uint64) (runInfo, error) {
	var total uint64
	span := runs[0].runSpan
	for _, r := range runs {
		total += r.n
		span = span.union(r.runSpan)
	}
	w, err := s.newRun(tx, id, total, span)
	if err != nil {
		return runInfo{}, err
	}
	seen := tx.Bucket(bucketSeen)
	m := &runMerger{}
	for _, r := range runs {
		b := seen.Bucket(runName(r.id))
		if b == nil {
			return runInfo{}, fmt.Errorf("run %d missing", r.id)
		}
		m.add(b, nil)
	}
	for k, seq := m.next(); k != nil; k, seq = m.next() {
		if err := w.add(k, seq); err != nil {
			return runInfo{}, err
		}
		w.f.Add(k)
	}
	merged, err := finishRun(tx, w, id)
	if err != nil {
		return runInfo{}, err
	}
	for _, r := range runs {
		if err := seen.DeleteBucket(runName(r.id)); err != nil {
			return runInfo{}, fmt.Errorf("delete run: %w", err)
		}
		if err := tx.Bucket(bucketRuns).Delete(runName(r.id)); err != nil {
			return runInfo{}, fmt.Errorf("delete run entry: %w", err)
		}
	}
	return merged, nil
}

// runIter walks the keys of one run in order.
type runIter struct {
	c     *bolt.Cursor
	block []byte
	i, n  int
}

// key returns the current key, nil at the end.
func (it *runIter) key() []byte {
	if it.block == nil {
		return nil
	}
	return blockKey(it.block, it.i)
}

// seq returns the seq of the current key.
func (it *runIter) seq() uint64 { return blockSeq(it.block, it.i) }

func (it *runIter) advance() {
	if it.i++; it.i < it.n {
		return
	}
	for {
		_, v := it.c.Next()
		if v == nil {
			it.block = nil
			return
		}
		if it.block, it.i, it.n = v, 0, blockLen(v); it.n > 0 {
			return
		}
	}
}

// seek positions the iterator at the first key > after (the first key when
// after is nil).
func (it *runIter) seek(after []byte) {
	var v []byte
	if after == nil {
		_, v = it.c.First()
	} else {
		bk, bv := it.c.Seek(after)
		if bk == nil || !bytes.Equal(bk, after) {
			// The block holding keys just above `after` starts before it.
			if bk == nil {
				bk, bv = it.c.Last()
			} else {
				bk, bv = it.c.Prev()
			}
			if bk == nil {
				_, bv = it.c.First()
			}
		}
		v = bv
	}
	if v == nil {
		it.block = nil
		return
	}
	it.block, it.n, it.i = v, blockLen(v), 0
	if after != nil {
		i, found := blockSearch(v, after)
		if found {
			i++
		}
		it.i = i - 1
	} else {
		it.i = -1
	}
	it.advance()
}

// runMerger yields the keys of several runs in ascending order; a key in
// several runs (which Apply never writes) is returned once.
type runMerger struct{ its []*runIter }

func (m *runMerger) add(b *bolt.Bucket, after []byte) {
	it := &runIter{c: b.Cursor()}
	it.seek(after)
	m.its = append(m.its, it)
}

// next returns the next key and its seq, nil at the end. The key is valid
// while the transaction is.
func (m *runMerger) next() ([]byte, uint64) {
	var least *runIter
	for _, it := range m.its {
		if k := it.key(); k != nil && (least == nil || bytes.Compare(k, least.key()) < 0) {
			least = it
		}
	}
	if least == nil {
		return nil, 0
	}
	k, seq := least.key(), least.seq()
	for _, it := range m.its {
		if it != least {
			if ik := it.key(); ik != nil && bytes.Equal(ik, k) {
				it.advance()
			}
		}
	}
	least.advance()
	return k, seq
}

// newRunMerger merges all runs of the seen set from after a key.
func newRunMerger(tx *bolt.Tx, after []byte) (*runMerger, error) {
	runs, err := loadRuns(tx, 0)
	if err != nil {
		return nil, err
	}
	seen := tx.Bucket(bucketSeen)
	m := &runMerger{}
	for _, r := range runs {
		b := seen.Bucket(runName(r.id))
		if b == nil {
			return nil, fmt.Errorf("run %d missing", r.id)
		}
		m.add(b, after)
	}
	return m, nil
}
