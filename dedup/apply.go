package dedup

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Entry is one log record to apply: its offset and its decoded event.
type Entry struct {
	Offset uint64
	Event  event.Event
}

// ApplyResult tells what one Apply did.
type ApplyResult struct {
	Unique     int    // entries stored as new events
	Duplicates int    // entries whose key was already stored (or earlier in the chunk)
	Malformed  int    // entries skipped: empty (or oversized) topic or event ID
	Skipped    int    // entries at or below the checkpoint, already applied before
	Checkpoint uint64 // checkpoint after the call
}

// idxFillPercent is the split point of the per-topic index buckets: their
// keys start with the event timestamp, which mostly grows, so pages are
// filled nearly full instead of the default half.
const idxFillPercent = 0.9

// Apply applies consecutive log entries in one bbolt transaction: it stores
// the events whose (topic, event_id) is new (the first one wins when a key
// occurs twice in entries), counts the others as duplicates, and moves the
// checkpoint to the last entry's offset. Entries at or below the checkpoint
// are skipped, so re-applying a chunk after a crash is harmless.
//
// Offsets must be consecutive and the first one at most Checkpoint()+1, else
// Apply returns ErrOutOfOrder and changes nothing. An entry with an empty
// topic or event ID, or with more than 8 KiB of topic and event ID together,
// is counted as malformed, never stored. When the commit
// fails nothing changes (not the checkpoint, not the bloom filter) and the
// same entries may be applied again.
func (s *Store) Apply(entries []Entry) (ApplyResult, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.closed.Load() {
		return ApplyResult{}, ErrClosed
	}
	res := ApplyResult{Checkpoint: s.checkpoint.Load()}
	work, err := unapplied(entries, res.Checkpoint)
	res.Skipped = len(entries) - len(work)
	if err != nil || len(work) == 0 {
		return res, err
	}
	c := newChunk(work, s.k)
	c.testBloom(s.bloom)
	runs, nextRun := s.runs, s.nextRun
	err = s.db.Update(func(tx *bolt.Tx) error {
		var err error
		runs, nextRun, err = s.commitChunk(tx, c, runs, nextRun)
		return err
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return res, ErrClosed
		}
		return res, fmt.Errorf("commit chunk: %w", err)
	}
	s.committed(c, runs, nextRun)
	res.Unique, res.Duplicates, res.Malformed = len(c.fresh), c.dups, c.malformed
	res.Checkpoint = s.checkpoint.Load()
	return res, nil
}

// unapplied checks that entries are consecutive offsets starting at most at
// checkpoint+1, and returns those above the checkpoint.
func unapplied(entries []Entry, checkpoint uint64) ([]Entry, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if entries[0].Offset > checkpoint+1 {
		return nil, fmt.Errorf("%w: first offset %d after checkpoint %d", ErrOutOfOrder, entries[0].Offset, checkpoint)
	}
	for i := 1; i < len(entries); i++ {
		if entries[i].Offset != entries[i-1].Offset+1 {
			return nil, fmt.Errorf("%w: offset %d follows %d", ErrOutOfOrder, entries[i].Offset, entries[i-1].Offset)
		}
	}
	skip := int(min(checkpoint+1-entries[0].Offset, uint64(len(entries))))
	return entries[skip:], nil
}

// commitChunk writes every effect of chunk c in tx: the new events, the
// seen set's new run (and the merges it completes), the counters and the
// checkpoint. It returns the run list and next run id after it.
func (s *Store) commitChunk(tx *bolt.Tx, c *chunk, runs []runInfo, nextRun uint64) ([]runInfo, uint64, error) {
	probe, err := probeOrder(tx, runs)
	if err != nil {
		return nil, 0, err
	}
	c.classify(probe)
	if err := c.write(tx); err != nil {
		return nil, 0, err
	}
	if len(c.fresh) > 0 {
		r, err := s.writeRun(tx, c, nextRun)
		if err != nil {
			return nil, 0, err
		}
		runs = append(runs[:len(runs):len(runs)], r)
		if runs, nextRun, err = s.compact(tx, runs, nextRun+1); err != nil {
			return nil, 0, err
		}
	}
	if err := c.writeMeta(tx, nextRun); err != nil {
		return nil, 0, err
	}
	if s.opts.failCommit != nil {
		if err := s.opts.failCommit(); err != nil {
			return nil, 0, err
		}
	}
	return runs, nextRun, nil
}

// writeMeta adds the chunk's counts to the lifetime counters and moves the
// checkpoint to its last entry.
func (c *chunk) writeMeta(tx *bolt.Tx, nextRun uint64) error {
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(metaNextRun, putU64(nextRun)); err != nil {
		return fmt.Errorf("write next run: %w", err)
	}
	for _, kv := range []struct {
		key   []byte
		delta int
	}{{metaUnique, len(c.fresh)}, {metaDuplicates, c.dups}, {metaMalformed, c.malformed}} {
		if kv.delta == 0 {
			continue
		}
		if err := meta.Put(kv.key, putU64(u64(meta.Get(kv.key))+uint64(kv.delta))); err != nil {
			return fmt.Errorf("write counter: %w", err)
		}
	}
	if err := meta.Put(metaCheckpoint, putU64(c.work[len(c.work)-1].Offset)); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// committed makes a committed chunk's effects visible in memory: the runs,
// the filters, the key count and the checkpoint; it starts a filter rebuild
// when the keys outgrew the front filter.
func (s *Store) committed(c *chunk, runs []runInfo, nextRun uint64) {
	s.runs, s.nextRun = runs, nextRun
	s.setRunBits()
	newKeys := make([][]byte, len(c.fresh))
	newLocs := make([][]uint64, len(c.fresh))
	for i, j := range c.fresh {
		newKeys[i], newLocs[i] = c.keys[j], c.locs[j]
	}
	s.bloom.addAll(newKeys, newLocs)
	keys := s.keys.Add(uint64(len(newKeys)))
	s.topics.Add(uint64(c.newTopics))
	s.checkpoint.Store(c.work[len(c.work)-1].Offset)
	if uint(keys) > s.bloom.capacityNow() && !s.closed.Load() {
		s.startGrow(uint(keys) * 2)
	}
}

// chunk is the working state of one Apply.
type chunk struct {
	work      []Entry
	keys      [][]byte   // seen key per entry; nil for a malformed entry
	locs      [][]uint64 // bloom hash locations of each key (shared by all filters)
	maybe     []bool     // bloom filter says the key may be stored
	order     []int      // indices of valid entries sorted by (key, offset)
	fresh     []int      // indices of new entries, sorted by key
	dups      int
	malformed int
	newTopics int // topics that got their first event
}

func newChunk(work []Entry, k uint) *chunk {
	c := &chunk{work: work, keys: make([][]byte, len(work)), locs: make([][]uint64, len(work)), maybe: make([]bool, len(work))}
	size := 0
	for i := range work {
		size += 10 + len(work[i].Event.Topic) + len(work[i].Event.EventID)
	}
	buf := make([]byte, 0, size)
	c.order = make([]int, 0, len(work))
	for i := range work {
		e := &work[i].Event
		if e.Topic == "" || e.EventID == "" || len(e.Topic)+len(e.EventID) > maxKeyLen {
			c.malformed++
			continue
		}
		start := len(buf)
		buf = appendSeenKey(buf, e.Topic, e.EventID)
		c.keys[i] = buf[start:len(buf):len(buf)]
		c.locs[i] = bloom.Locations(c.keys[i], k)
		c.order = append(c.order, i)
	}
	// Equal keys keep offset order (the index breaks ties).
	slices.SortFunc(c.order, func(a, b int) int { return cmp.Or(bytes.Compare(c.keys[a], c.keys[b]), cmp.Compare(a, b)) })
	return c
}

func (c *chunk) testBloom(g *guardedFilter) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, i := range c.order {
		c.maybe[i] = g.f.TestLocations(c.locs[i])
	}
}

// classify decides for every valid entry whether it is new: the first
// occurrence of a key in the chunk is new unless the bloom filter and then a
// run of the seen set say it is stored; later occurrences are duplicates.
func (c *chunk) classify(probe []probeRun) {
	c.fresh = make([]int, 0, len(c.order))
	var prev []byte
	for n, i := range c.order {
		k := c.keys[i]
		if n > 0 && bytes.Equal(k, prev) {
			c.dups++
			continue
		}
		prev = k
		if c.maybe[i] && inRuns(probe, k, c.locs[i]) {
			c.dups++
			continue
		}
		c.fresh = append(c.fresh, i)
	}
}

// write stores the new events and updates the per-topic counts.
func (c *chunk) write(tx *bolt.Tx) error {
	if len(c.fresh) == 0 {
		return nil
	}
	// Index keys and values, then group by topic in key order.
	size := 0
	for _, i := range c.fresh {
		size += idxKeyLen + c.work[i].Event.EncodedSize()
	}
	buf := make([]byte, 0, size)
	idxKeys := make([][]byte, len(c.work))
	vals := make([][]byte, len(c.work))
	for _, i := range c.fresh {
		e := &c.work[i]
		start := len(buf)
		buf = appendIdxKey(buf, e.Event.Timestamp, e.Offset)
		mid := len(buf)
		buf = e.Event.AppendBinary(buf)
		idxKeys[i], vals[i] = buf[start:mid:mid], buf[mid:len(buf):len(buf)]
	}
	// Group by topic (offset order), then sort each group by index key;
	// timestamps mostly grow with offsets, so the sort is usually skipped.
	groups := map[string][]int{}
	for _, i := range slices.Sorted(slices.Values(c.fresh)) {
		t := c.work[i].Event.Topic
		groups[t] = append(groups[t], i)
	}
	byKey := func(a, b int) int { return bytes.Compare(idxKeys[a], idxKeys[b]) }
	byTopic := make([]int, 0, len(c.fresh))
	for _, t := range slices.Sorted(maps.Keys(groups)) {
		g := groups[t]
		if !slices.IsSortedFunc(g, byKey) {
			slices.SortFunc(g, byKey)
		}
		byTopic = append(byTopic, g...)
	}
	idx, topics := tx.Bucket(bucketIdx), tx.Bucket(bucketTopics)
	for start := 0; start < len(byTopic); {
		topic := c.work[byTopic[start]].Event.Topic
		end := start + 1
		for end < len(byTopic) && c.work[byTopic[end]].Event.Topic == topic {
			end++
		}
		b, err := idx.CreateBucketIfNotExists([]byte(topic))
		if err != nil {
			return fmt.Errorf("create topic bucket: %w", err)
		}
		b.FillPercent = idxFillPercent
		for _, i := range byTopic[start:end] {
			if err := b.Put(idxKeys[i], vals[i]); err != nil {
				return fmt.Errorf("put event: %w", err)
			}
		}
		old := topics.Get([]byte(topic))
		if old == nil {
			c.newTopics++
		}
		n := u64(old) + uint64(end-start)
		if err := topics.Put([]byte(topic), putU64(n)); err != nil {
			return fmt.Errorf("put topic count: %w", err)
		}
		start = end
	}
	return nil
}
