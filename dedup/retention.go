package dedup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
)

// Retention of stored events. Options.Retention is the default of every
// topic; SetRetention gives a topic its own (kept in the retention bucket).
// Expiry removes a topic's oldest events (by seq, which is apply order)
// while the topic holds more than its Events bound or its oldest event was
// applied longer ago than its Age bound: from the events bucket and the
// topic's byseq and bytime indexes. The key stays in the seen set, so a
// late resend is still a duplicate (of a seq that is gone); seqs are never
// reused.
//
// Expiry runs in maintenance steps, each bounded by Options.ExpireBatch
// expiries and maxVisitPerStep topics: one inside every Apply transaction
// (after the chunk's writes) and, while the consumer has nothing to apply,
// one per Maintain call in a transaction of its own. A topic may thus hold
// more than its bound for a few steps; no step is a large transaction.

// Defaults of the lifecycle options.
const (
	// DefaultExpireBatch bounds the events one maintenance step expires:
	// twice a default chunk, so that expiry keeps up with a consumer
	// applying full chunks.
	DefaultExpireBatch = 2 * DefaultChunkEntries
	// DefaultMaxRetentionOverrides bounds the topics with a retention of
	// their own.
	DefaultMaxRetentionOverrides = 10_000
)

// maxVisitPerStep bounds the topics one step looks at; the next step goes
// on after the last one (round robin).
const maxVisitPerStep = 256

var (
	bucketRetention = []byte("retention") // topic -> its retention override (created when the first is set)
	metaExpired     = []byte("expired")   // events expired (lifetime)
	metaForgotten   = []byte("forgotten") // keys the dedup window dropped (lifetime)
)

// Retention override value: version (1) | flags (bit 0: age set, bit 1:
// events set) | age (int64 nanoseconds) | events (uint64), big-endian.
const (
	retentionVersion  = 1
	retentionValueLen = 18
	retentionAgeSet   = 1 << 0
	retentionEventSet = 1 << 1
)

func encodeOverride(o event.RetentionOverride) []byte {
	var flags byte
	var age, events uint64
	if o.Age != nil {
		flags |= retentionAgeSet
		age = uint64(*o.Age)
	}
	if o.Events != nil {
		flags |= retentionEventSet
		events = *o.Events
	}
	v := []byte{retentionVersion, flags}
	v = binary.BigEndian.AppendUint64(v, age)
	return binary.BigEndian.AppendUint64(v, events)
}

func decodeOverride(v []byte) (event.RetentionOverride, error) {
	var o event.RetentionOverride
	if len(v) != retentionValueLen || v[0] != retentionVersion || v[1]&^(retentionAgeSet|retentionEventSet) != 0 {
		return o, errors.New("bad retention value")
	}
	if v[1]&retentionAgeSet != 0 {
		age := time.Duration(binary.BigEndian.Uint64(v[2:]))
		o.Age = &age
	}
	if v[1]&retentionEventSet != 0 {
		n := binary.BigEndian.Uint64(v[10:])
		o.Events = &n
	}
	return o, nil
}

// loadOverrides reads the retention overrides.
func loadOverrides(tx *bolt.Tx) (map[string]event.RetentionOverride, error) {
	out := map[string]event.RetentionOverride{}
	b := tx.Bucket(bucketRetention)
	if b == nil {
		return out, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		o, err := decodeOverride(v)
		if err != nil {
			return fmt.Errorf("retention of topic %q: %w", k, err)
		}
		out[string(k)] = o
		return nil
	})
	return out, err
}

// Retention returns the retention of topic: its override and the bounds
// in force.
func (s *Store) Retention(topic string) (event.TopicRetention, error) {
	if err := checkRetentionTopic(topic); err != nil {
		return event.TopicRetention{}, err
	}
	var o event.RetentionOverride
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRetention)
		if b == nil {
			return nil
		}
		v := b.Get([]byte(topic))
		if v == nil {
			return nil
		}
		var err error
		o, err = decodeOverride(v)
		return err
	})
	if err != nil {
		return event.TopicRetention{}, fmt.Errorf("read retention: %w", err)
	}
	return event.TopicRetention{Topic: topic, Override: o, Effective: o.Apply(s.opts.Retention)}, nil
}

// SetRetention gives topic (which need not have events yet) its own
// retention, replacing its previous override; an override with no field
// set removes it, and the topic follows the default again. It is durable
// when SetRetention returns, and expiry follows it from the next step. A
// negative age is Invalid; a new override past DefaultMaxRetentionOverrides
// is a Conflict.
func (s *Store) SetRetention(topic string, o event.RetentionOverride) (event.TopicRetention, error) {
	if err := checkRetentionTopic(topic); err != nil {
		return event.TopicRetention{}, err
	}
	if o.Age != nil && *o.Age < 0 {
		return event.TopicRetention{}, event.Errorf(event.Invalid, "retention age must not be negative")
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	_, exists := s.overrides[topic]
	if !o.IsZero() && !exists && len(s.overrides) >= DefaultMaxRetentionOverrides {
		return event.TopicRetention{}, event.Errorf(event.Conflict,
			"%d topics have a retention of their own, the most allowed: remove one first", len(s.overrides))
	}
	err := s.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketRetention)
		if err != nil {
			return err
		}
		if o.IsZero() {
			return b.Delete([]byte(topic))
		}
		return b.Put([]byte(topic), encodeOverride(o))
	})
	if err != nil {
		return event.TopicRetention{}, fmt.Errorf("write retention: %w", err)
	}
	if o.IsZero() {
		delete(s.overrides, topic)
	} else {
		s.overrides[topic] = o
	}
	return event.TopicRetention{Topic: topic, Override: o, Effective: o.Apply(s.opts.Retention)}, nil
}

func checkRetentionTopic(topic string) error {
	if topic == "" || len(topic) > event.MaxFieldBytes {
		return event.Errorf(event.Invalid, "topic must be 1 to %d bytes", event.MaxFieldBytes)
	}
	return nil
}

// maintained is what one maintenance step did, to be made visible in
// memory once its transaction committed.
type maintained struct {
	expired   uint64
	firstSeq  uint64 // 0: unchanged
	forgotten uint64 // keys dropped with runs
	runs      []runInfo
	next      []byte // topic the next expiry step starts at
	more      bool   // a bound stopped the step: more may be due
}

func (m *maintained) changed() bool { return m.expired > 0 || m.forgotten > 0 }

// maintain runs one maintenance step in tx, the caller holding applyMu:
// expiry (at most ExpireBatch events) and the dedup window's drops (at
// most maxDropsPerStep runs), with the counters. runs is the run list
// (after the chunk's own changes), lastSeq the last seq given (by the
// chunk too).
func (s *Store) maintain(tx *bolt.Tx, runs []runInfo, lastSeq uint64, now int64) (maintained, error) {
	m := maintained{runs: runs}
	var err error
	if err = s.expire(tx, now, lastSeq, &m); err != nil {
		return m, err
	}
	var capped bool
	if m.runs, m.forgotten, capped, err = s.dropRuns(tx, runs, now); err != nil {
		return m, err
	}
	m.more = m.more || capped
	meta := tx.Bucket(bucketMeta)
	for _, kv := range []struct {
		key   []byte
		delta uint64
	}{{metaExpired, m.expired}, {metaForgotten, m.forgotten}} {
		if kv.delta == 0 {
			continue
		}
		if err := meta.Put(kv.key, putU64(u64(meta.Get(kv.key))+kv.delta)); err != nil {
			return m, fmt.Errorf("write counter: %w", err)
		}
	}
	return m, nil
}

// expire runs the expiry half of a step (see the top of this file).
func (s *Store) expire(tx *bolt.Tx, now int64, lastSeq uint64, m *maintained) error {
	def := s.opts.Retention
	if def == (event.Retention{}) && len(s.overrides) == 0 {
		return nil
	}
	budget := s.opts.ExpireBatch
	topics := tx.Bucket(bucketTopics)
	visit := s.expiryOrder(topics)
	visited := 0
	for topic := visit(); topic != nil && visited < maxVisitPerStep; topic = visit() {
		visited++
		ret := def
		if o, ok := s.overrides[string(topic)]; ok {
			ret = o.Apply(def)
		}
		if ret == (event.Retention{}) {
			continue
		}
		n, full, err := expireTopic(tx, topic, u64(topics.Get(topic)), ret, budget, now)
		if err != nil {
			return fmt.Errorf("expire topic %q: %w", topic, err)
		}
		m.expired += uint64(n)
		budget -= n
		if full {
			m.next, m.more = bytes.Clone(topic), true // go on with this topic next time
			break
		}
		m.next = append(bytes.Clone(topic), 0) // the first topic after it
	}
	// Topics left unvisited are due only if this step found work: an idle
	// consumer must not step through thousands of topics without a pause.
	m.more = m.more || (visited == maxVisitPerStep && m.expired > 0)
	if m.expired > 0 {
		m.firstSeq = lastSeq + 1
		if k, _ := tx.Bucket(bucketEvents).Cursor().First(); k != nil {
			m.firstSeq = u64(k)
		}
	}
	return nil
}

// expiryOrder returns an iterator over the topics to look at, from
// s.expireNext on and round again from the first, each once: every topic
// when there is a default retention, else only those with an override.
func (s *Store) expiryOrder(topics *bolt.Bucket) func() []byte {
	start := s.expireNext
	if s.opts.Retention == (event.Retention{}) {
		names := slices.Sorted(maps.Keys(s.overrides))
		i, _ := slices.BinarySearch(names, string(start))
		n := 0
		return func() []byte {
			if n == len(names) {
				return nil
			}
			t := names[(i+n)%len(names)]
			n++
			return []byte(t)
		}
	}
	// From start to the end, then from the first topic up to start.
	c := topics.Cursor()
	k, _ := c.Seek(start)
	wrapped := start == nil
	return func() []byte {
		if k == nil && !wrapped {
			wrapped = true
			k, _ = c.First()
		}
		if k == nil || (wrapped && start != nil && bytes.Compare(k, start) >= 0) {
			return nil
		}
		t := k
		k, _ = c.Next()
		return t
	}
}

// expireTopic expires the oldest events of topic (count: its lifetime
// count of unique events) that ret bounds, at most budget of them; full
// is true when the budget ran out first.
func expireTopic(tx *bolt.Tx, topic []byte, count uint64, ret event.Retention, budget int, now int64) (n int, full bool, err error) {
	seqB := tx.Bucket(bucketBySeq).Bucket(topic)
	timeB := tx.Bucket(bucketByTime).Bucket(topic)
	if seqB == nil || timeB == nil {
		return 0, false, nil
	}
	events := tx.Bucket(bucketEvents)
	c := seqB.Cursor()
	for ; n < budget; n++ {
		k, v := c.First()
		if k == nil {
			return n, false, nil
		}
		stored := count - u64(v) + 1 // ordinals are dense within the topic
		val := events.Get(k)
		if val == nil {
			return n, false, fmt.Errorf("seq %d indexed but not stored", u64(k))
		}
		e, appliedAt, err := decodeEventValue(u64(k), val)
		if err != nil {
			return n, false, err
		}
		over := ret.Events > 0 && stored > ret.Events
		old := ret.Age > 0 && now-appliedAt > int64(ret.Age)
		if !over && !old {
			return n, false, nil
		}
		seqKey := bytes.Clone(k)
		if err := c.Delete(); err != nil {
			return n, false, err
		}
		if err := events.Delete(seqKey); err != nil {
			return n, false, err
		}
		if err := timeB.Delete(appendIdxKey(nil, e.Timestamp, e.Offset)); err != nil {
			return n, false, err
		}
	}
	return n, true, nil
}

// Maintain runs one maintenance step in a transaction of its own: expiry
// and the dedup window's drops, bounded as in Apply. The consumer calls it
// while it has nothing to apply. more is true when a bound stopped the
// step (call again soon). A step with nothing to do commits nothing.
func (s *Store) Maintain() (more bool, err error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.closed.Load() {
		return false, ErrClosed
	}
	if s.opts.ReadOnly || !s.maintains() {
		return false, nil
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return false, closedErr(err)
	}
	m, err := s.maintain(tx, s.runs, s.lastSeq.Load(), s.now().UnixNano())
	if err != nil || !m.changed() {
		_ = tx.Rollback()
		if err == nil {
			s.expireNext = m.next
		}
		return m.more, err
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit maintenance: %w", closedErr(err))
	}
	s.maintained(m)
	s.applied.bump()
	return m.more, nil
}

// maintains reports whether maintenance has anything to look at.
func (s *Store) maintains() bool {
	return s.opts.Retention != (event.Retention{}) || len(s.overrides) > 0 || s.opts.DedupWindow > 0
}

// maintained makes a committed step's effects visible in memory; the
// caller holds applyMu.
func (s *Store) maintained(m maintained) {
	s.expireNext = m.next
	if m.expired > 0 {
		s.expired.Add(m.expired)
		s.firstSeq.Store(m.firstSeq)
	}
	if m.forgotten > 0 {
		s.runs = m.runs
		s.forgotten.Add(m.forgotten)
		s.keys.Add(^(m.forgotten - 1)) // subtract
		s.setRunBits()
	}
}
