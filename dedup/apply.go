package dedup

import (
	"bytes"
	"cmp"
	"encoding/binary"
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
	// Apply times never go back, also when the clock does: expiry by age
	// stops at the first event young enough, in seq order.
	now := s.now().UnixNano()
	c.appliedAt = max(now, s.lastApplied)
	c.testBloom(s.bloom)
	runs, nextRun := s.runs, s.nextRun
	var m maintained
	err = s.db.Update(func(tx *bolt.Tx) error {
		var err error
		runs, nextRun, err = s.commitChunk(tx, c, runs, nextRun)
		if err == nil {
			m, err = s.maintain(tx, runs, s.lastSeq.Load()+uint64(len(c.fresh)), now)
		}
		if err == nil && s.opts.failCommit != nil {
			err = s.opts.failCommit()
		}
		return err
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return res, ErrClosed
		}
		return res, fmt.Errorf("commit chunk: %w", err)
	}
	s.committed(c, m.runs, nextRun)
	s.maintained(m)
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
	c.classify(probe, s.lastSeq.Load())
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
	}{{metaUnique, len(c.fresh)}, {metaDuplicates, c.dups}, {metaMalformed, c.malformed}, {metaTopics, c.newTopics}} {
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
	added := s.frontAdded.Add(uint64(len(newKeys)))
	s.lastSeq.Add(uint64(len(newKeys)))
	s.topics.Add(uint64(c.newTopics))
	s.lastApplied = c.appliedAt
	s.verdicts.put(c)
	s.checkpoint.Store(c.work[len(c.work)-1].Offset)
	s.applied.bump()
	// The filter is rebuilt twice as large when the keys outgrow it, and,
	// with a dedup window (keys are forgotten, their bits stay), when as
	// many keys were added as it was sized for.
	capacity := s.bloom.capacityNow()
	if s.closed.Load() {
		return
	}
	if uint(keys) > capacity || (s.opts.DedupWindow > 0 && uint(added) > capacity) {
		s.startGrow(max(uint(keys)*2, s.opts.ExpectedKeys))
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
	seqs      []uint64   // per entry: its seq if new, the seq of the event it duplicates if not; 0 if malformed
	dup       []bool     // per entry: a duplicate
	dups      int
	malformed int
	newTopics int   // topics that got their first event
	appliedAt int64 // apply time (Unix nanoseconds) stored with the new events
}

func newChunk(work []Entry, k uint) *chunk {
	c := &chunk{work: work, keys: make([][]byte, len(work)), locs: make([][]uint64, len(work)),
		maybe: make([]bool, len(work)), seqs: make([]uint64, len(work)), dup: make([]bool, len(work))}
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
// New entries get the seqs after lastSeq in offset order; every duplicate
// gets the seq of the event it duplicates.
func (c *chunk) classify(probe []probeRun, lastSeq uint64) {
	c.fresh = make([]int, 0, len(c.order))
	first := -1 // entry index of the first occurrence of the current key
	var later []int
	for n, i := range c.order {
		k := c.keys[i]
		if n > 0 && bytes.Equal(k, c.keys[first]) {
			c.dups++
			c.dup[i] = true
			later = append(later, i, first)
			continue
		}
		first = i
		if c.maybe[i] {
			if seq, ok := inRuns(probe, k, c.locs[i]); ok {
				c.dups++
				c.dup[i], c.seqs[i] = true, seq
				continue
			}
		}
		c.fresh = append(c.fresh, i)
	}
	byOffset := slices.Sorted(slices.Values(c.fresh))
	for j, i := range byOffset {
		c.seqs[i] = lastSeq + 1 + uint64(j)
	}
	for j := 0; j < len(later); j += 2 {
		c.seqs[later[j]] = c.seqs[later[j+1]]
	}
}

// write stores the new events (by seq, and in the per-topic indexes by seq
// and by time) and updates the per-topic counts.
func (c *chunk) write(tx *bolt.Tx) error {
	if len(c.fresh) == 0 {
		return nil
	}
	byOffset := slices.Sorted(slices.Values(c.fresh)) // = seq order
	if err := c.writeEvents(tx, byOffset); err != nil {
		return err
	}
	groups := map[string][]int{}
	for _, i := range byOffset {
		t := c.work[i].Event.Topic
		groups[t] = append(groups[t], i)
	}
	topics := tx.Bucket(bucketTopics)
	for _, t := range slices.Sorted(maps.Keys(groups)) {
		old := topics.Get([]byte(t))
		if old == nil {
			c.newTopics++
		}
		count := u64(old)
		if err := c.writeTopic(tx, t, groups[t], count); err != nil {
			return err
		}
		if err := topics.Put([]byte(t), putU64(count+uint64(len(groups[t])))); err != nil {
			return fmt.Errorf("put topic count: %w", err)
		}
	}
	return nil
}

// writeEvents puts the new entries, given in seq order, into the events
// bucket.
func (c *chunk) writeEvents(tx *bolt.Tx, bySeq []int) error {
	size := 0
	for _, i := range bySeq {
		size += seqKeyLen + eventHeaderLen + c.work[i].Event.EncodedSize()
	}
	buf := make([]byte, 0, size)
	b := tx.Bucket(bucketEvents)
	b.FillPercent = 1.0 // seqs only grow: fill pages completely
	for _, i := range bySeq {
		e := &c.work[i]
		start := len(buf)
		buf = appendSeqKey(buf, c.seqs[i])
		mid := len(buf)
		buf = appendEventValue(buf, e.Offset, c.appliedAt, &e.Event)
		if err := b.Put(buf[start:mid:mid], buf[mid:len(buf):len(buf)]); err != nil {
			return fmt.Errorf("put event: %w", err)
		}
	}
	return nil
}

// writeTopic adds the new events of one topic (in seq order) to its
// indexes: by seq (value: the event's ordinal in the topic, from count+1)
// and by (timestamp, offset) (value: the seq).
func (c *chunk) writeTopic(tx *bolt.Tx, topic string, bySeq []int, count uint64) error {
	seqB, err := tx.Bucket(bucketBySeq).CreateBucketIfNotExists([]byte(topic))
	if err != nil {
		return fmt.Errorf("create topic bucket: %w", err)
	}
	seqB.FillPercent = 1.0
	timeB, err := tx.Bucket(bucketByTime).CreateBucketIfNotExists([]byte(topic))
	if err != nil {
		return fmt.Errorf("create topic bucket: %w", err)
	}
	timeB.FillPercent = idxFillPercent
	buf := make([]byte, 0, len(bySeq)*(2*seqKeyLen+8+idxKeyLen))
	for j, i := range bySeq {
		e := &c.work[i]
		start := len(buf)
		buf = appendSeqKey(buf, c.seqs[i])
		k := buf[start:len(buf):len(buf)]
		start = len(buf)
		buf = binary.BigEndian.AppendUint64(buf, count+1+uint64(j))
		if err := seqB.Put(k, buf[start:len(buf):len(buf)]); err != nil {
			return fmt.Errorf("put topic seq: %w", err)
		}
		start = len(buf)
		buf = appendIdxKey(buf, e.Event.Timestamp, e.Offset)
		if err := timeB.Put(buf[start:len(buf):len(buf)], k); err != nil {
			return fmt.Errorf("put topic time: %w", err)
		}
	}
	return nil
}
