package dedup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// This file checks an index file offline, beyond what Open checks: bbolt's
// own consistency check of the pages, and the invariants of the format
// between the buckets (see CheckIndex).

// maxFindings bounds the findings an IndexReport lists; the rest are
// counted.
const maxFindings = 100

// Finding is one problem CheckIndex found: where (a bucket and key, a page,
// "meta") and what.
type Finding struct {
	Where string
	What  string
}

func (f Finding) String() string { return f.Where + ": " + f.What }

// IndexReport is what CheckIndex found in an index file.
type IndexReport struct {
	Path       string
	Format     uint64
	Checkpoint uint64
	Unique     uint64
	Duplicates uint64
	Malformed  uint64
	Expired    uint64
	Forgotten  uint64
	Stored     uint64 // events in the events bucket
	Topics     int
	Keys       uint64 // keys in the seen set
	Runs       int

	Findings []Finding // the first maxFindings problems
	More     int       // problems found beyond them
}

// Clean reports whether nothing was found.
func (r *IndexReport) Clean() bool { return len(r.Findings) == 0 }

func (r *IndexReport) add(where, format string, args ...any) {
	if len(r.Findings) == maxFindings {
		r.More++
		return
	}
	r.Findings = append(r.Findings, Finding{Where: where, What: fmt.Sprintf(format, args...)})
}

// CheckIndex checks the index file at path, read-only: its pages as
// CheckFile does, bbolt's consistency check (Tx.Check: every page reached
// once, the freelist, key order), and the invariants of the format: the
// counters add up (unique + duplicates + malformed = checkpoint), seqs are
// dense among stored and expired events (every seq 1..unique is stored or
// counted as expired), offsets grow with seqs and stay within the
// checkpoint, byseq and bytime index exactly the stored events of their
// topic (ordinals dense, up to the topic's count), the runs of the seen set
// hold as many sorted keys as their entries say (unique - forgotten in
// all), and every stored event's key is in the seen set with the event's
// seq (unless the dedup window forgot keys). It returns an error only when
// it could not check: the file is missing (fs.ErrNotExist), or in use by a
// writer (ErrLocked, after lockTimeout); damage is reported as findings.
func CheckIndex(path string, lockTimeout time.Duration) (rep *IndexReport, err error) {
	rep = &IndexReport{Path: path}
	if _, err := os.Stat(path); err != nil {
		return rep, fmt.Errorf("check index: %w", err)
	}
	if err := CheckFile(path); err != nil {
		var de *DamageError
		if !errors.As(err, &de) {
			return rep, err
		}
		page := "file"
		if de.Page >= 0 {
			page = fmt.Sprintf("page %d", de.Page)
		}
		rep.add(page, "%s", de.Reason)
		return rep, nil
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rep.add("file", "bbolt failed reading it: %s", strings.ReplaceAll(fmt.Sprint(r), "\n", " "))
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: max(lockTimeout, time.Millisecond)})
	if errors.Is(err, berrors.ErrTimeout) {
		return rep, fmt.Errorf("check %s: %w", path, ErrLocked)
	}
	if err != nil {
		rep.add("file", "bbolt cannot open it: %v", err)
		return rep, nil
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			rep.add("pages", "%v", e)
		}
		if !rep.Clean() {
			return nil // the trees cannot be trusted to walk
		}
		(&indexCheck{rep: rep, tx: tx}).run()
		return nil
	})
	return rep, err
}

// indexCheck is one run of the format's checks in a read transaction.
type indexCheck struct {
	rep     *IndexReport
	tx      *bolt.Tx
	lastSeq uint64
	k       uint
	runs    []runInfo
	filters []*bloom.BloomFilter
}

func (c *indexCheck) run() {
	if !c.meta() {
		return
	}
	c.events()
	c.topicIndexes()
	c.seenSet()
	c.eventKeys()
	c.settings()
}

// meta checks the version, the buckets and the counters; false when the
// rest cannot be checked.
func (c *indexCheck) meta() bool {
	r := c.rep
	meta := c.tx.Bucket(bucketMeta)
	if meta == nil {
		r.add("meta", "bucket missing: not an index")
		return false
	}
	if r.Format = u64(meta.Get(metaVersion)); r.Format != formatVersion {
		r.add("meta", "format version %d, this version checks %d (format 2: aggregator upgrade-index)", r.Format, formatVersion)
		return false
	}
	ok := true
	for _, name := range allBuckets {
		if c.tx.Bucket(name) == nil {
			r.add(string(name), "bucket missing")
			ok = false
		}
	}
	r.Checkpoint, r.Unique = u64(meta.Get(metaCheckpoint)), u64(meta.Get(metaUnique))
	r.Duplicates, r.Malformed = u64(meta.Get(metaDuplicates)), u64(meta.Get(metaMalformed))
	r.Expired, r.Forgotten = u64(meta.Get(metaExpired)), u64(meta.Get(metaForgotten))
	c.lastSeq = r.Unique
	if r.Unique+r.Duplicates+r.Malformed != r.Checkpoint {
		r.add("meta", "counters do not add up: unique %d + duplicates %d + malformed %d != checkpoint %d",
			r.Unique, r.Duplicates, r.Malformed, r.Checkpoint)
	}
	if r.Expired > r.Unique || r.Forgotten > r.Unique {
		r.add("meta", "expired %d or forgotten %d above unique %d", r.Expired, r.Forgotten, r.Unique)
	}
	return ok
}

// events checks the events bucket: seqs within 1..unique, values that
// decode, offsets that grow with seqs and stay within the checkpoint, and
// stored + expired = unique.
func (c *indexCheck) events() {
	r := c.rep
	var prevOffset uint64
	err := c.tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
		r.Stored++
		where := fmt.Sprintf("events seq %d", u64(k))
		if len(k) != seqKeyLen || u64(k) == 0 || u64(k) > c.lastSeq {
			r.add(where, "seq outside 1..%d (key %x)", c.lastSeq, k)
			return nil
		}
		e, _, err := decodeEventValue(u64(k), v)
		switch {
		case err != nil:
			r.add(where, "%v", err)
		case e.Offset <= prevOffset || e.Offset > r.Checkpoint:
			r.add(where, "offset %d after offset %d of the seq before, or past the checkpoint %d", e.Offset, prevOffset, r.Checkpoint)
		default:
			prevOffset = e.Offset
		}
		return nil
	})
	if err != nil {
		r.add("events", "%v", err)
	}
	if r.Stored+r.Expired != r.Unique {
		r.add("events", "%d stored + %d expired != %d unique: seqs are not dense (events lost or not counted)",
			r.Stored, r.Expired, r.Unique)
	}
}

// topicIndexes checks byseq/<topic> and bytime/<topic> against the events
// and the topics bucket.
func (c *indexCheck) topicIndexes() {
	r := c.rep
	topics, events := c.tx.Bucket(bucketTopics), c.tx.Bucket(bucketEvents)
	var indexed uint64
	_ = topics.ForEach(func(k, v []byte) error {
		r.Topics++
		if c.tx.Bucket(bucketBySeq).Bucket(k) == nil {
			r.add(fmt.Sprintf("topics/%s", k), "no byseq bucket")
		}
		return nil
	})
	_ = c.tx.Bucket(bucketBySeq).ForEach(func(topic, _ []byte) error {
		seqB, timeB := c.tx.Bucket(bucketBySeq).Bucket(topic), c.tx.Bucket(bucketByTime).Bucket(topic)
		if seqB == nil {
			r.add(fmt.Sprintf("byseq/%s", topic), "not a bucket")
			return nil
		}
		if timeB == nil {
			r.add(fmt.Sprintf("bytime/%s", topic), "bucket missing")
			return nil
		}
		n := c.bySeq(topic, seqB, events, u64(topics.Get(topic)))
		if m := c.byTime(topic, timeB, events); m != n {
			r.add(fmt.Sprintf("bytime/%s", topic), "%d entries, byseq has %d", m, n)
		}
		indexed += n
		return nil
	})
	if indexed != r.Stored {
		r.add("byseq", "%d events indexed by topic, %d stored", indexed, r.Stored)
	}
}

// bySeq checks one topic's byseq bucket and returns its entries.
func (c *indexCheck) bySeq(topic []byte, b, events *bolt.Bucket, count uint64) uint64 {
	var n, prev uint64
	_ = b.ForEach(func(k, v []byte) error {
		n++
		where := fmt.Sprintf("byseq/%s seq %d", topic, u64(k))
		ord := u64(v)
		if prev != 0 && ord != prev+1 {
			c.rep.add(where, "ordinal %d after %d (not dense)", ord, prev)
		}
		prev = ord
		if ord > count {
			c.rep.add(where, "ordinal %d past the topic's count %d", ord, count)
		}
		c.sameTopic(where, topic, events.Get(k), u64(k), nil)
		return nil
	})
	return n
}

// byTime checks one topic's bytime bucket and returns its entries.
func (c *indexCheck) byTime(topic []byte, b, events *bolt.Bucket) uint64 {
	var n uint64
	_ = b.ForEach(func(k, v []byte) error {
		n++
		where := fmt.Sprintf("bytime/%s key %x", topic, k)
		if _, _, ok := parseIdxKey(k); !ok || len(v) != seqKeyLen {
			c.rep.add(where, "bad entry")
			return nil
		}
		c.sameTopic(where, topic, events.Get(v), u64(v), k)
		return nil
	})
	return n
}

// sameTopic checks that the event value v of seq exists and is of topic
// (and, given idxKey, has that timestamp and offset).
func (c *indexCheck) sameTopic(where string, topic, v []byte, seq uint64, idxKey []byte) {
	if v == nil {
		c.rep.add(where, "seq %d is not stored", seq)
		return
	}
	e, _, err := decodeEventValue(seq, v)
	if err != nil {
		return // reported by events
	}
	if e.Topic != string(topic) {
		c.rep.add(where, "seq %d is an event of topic %q", seq, e.Topic)
	}
	if idxKey != nil && !bytes.Equal(appendIdxKey(nil, e.Timestamp, e.Offset), idxKey) {
		c.rep.add(where, "seq %d has timestamp %v and offset %d", seq, e.Timestamp, e.Offset)
	}
}

// seenSet checks the runs: an entry and a bucket for each, their keys in
// order within valid blocks, as many as the entry says, with seqs within
// 1..unique; it builds each run's bloom filter for eventKeys.
func (c *indexCheck) seenSet() {
	r := c.rep
	runs, err := loadRuns(c.tx, 0)
	if err != nil {
		r.add("runs", "%v", err)
		return
	}
	seen := c.tx.Bucket(bucketSeen)
	_, c.k = bloom.EstimateParameters(DefaultExpectedKeys, DefaultFalsePositiveRate)
	for _, run := range runs {
		where := fmt.Sprintf("seen run %d", run.id)
		b := seen.Bucket(runName(run.id))
		if b == nil {
			r.add(where, "listed in runs, bucket missing")
			continue
		}
		m, _ := bloom.EstimateParameters(uint(max(run.n, 1)), DefaultFalsePositiveRate)
		f := bloom.New(max(m, 64), c.k)
		n := c.runKeys(where, b, f)
		if n != run.n {
			r.add(where, "holds %d keys, its entry says %d", n, run.n)
		}
		r.Keys += n
		c.runs, c.filters = append(c.runs, run), append(c.filters, f)
	}
	r.Runs = len(c.runs)
	_ = seen.ForEach(func(k, _ []byte) error {
		if c.tx.Bucket(bucketRuns).Get(k) == nil {
			r.add(fmt.Sprintf("seen run %x", k), "bucket not listed in runs")
		}
		return nil
	})
	if r.Keys != r.Unique-min(r.Forgotten, r.Unique) {
		r.add("seen", "%d keys, unique %d - forgotten %d = %d", r.Keys, r.Unique, r.Forgotten, r.Unique-min(r.Forgotten, r.Unique))
	}
}

// runKeys checks the blocks of one run and adds its keys to f; it returns
// the number of keys.
func (c *indexCheck) runKeys(where string, b *bolt.Bucket, f *bloom.BloomFilter) uint64 {
	var n uint64
	var prev []byte
	_ = b.ForEach(func(k, v []byte) error {
		count := blockLen(v)
		if !validBlock(v) || !bytes.Equal(blockKey(v, 0), k) {
			c.rep.add(where, "bad block %x", k)
			return nil
		}
		for i := range count {
			key := blockKey(v, i)
			if prev != nil && bytes.Compare(key, prev) <= 0 {
				c.rep.add(where, "key %q out of order", key)
			}
			if seq := blockSeq(v, i); seq == 0 || seq > c.lastSeq {
				c.rep.add(where, "key %q has seq %d outside 1..%d", key, seq, c.lastSeq)
			}
			f.Add(key)
			prev = key
			n++
		}
		return nil
	})
	return n
}

// validBlock reports whether b is a block whose key offsets lie in order
// within its data area (so that blockKey cannot fail on it).
func validBlock(b []byte) bool {
	n := blockLen(b)
	if n == 0 || len(b) < 4+12*n {
		return false
	}
	size := uint32(len(b) - 4 - 12*n)
	prev := uint32(0)
	for i := range n {
		o := binary.BigEndian.Uint32(b[4+4*i:])
		if (i == 0 && o != 0) || o < prev || o > size {
			return false
		}
		prev = o
	}
	return true
}

// eventKeys checks that every stored event's key is in the seen set with
// its seq. With keys forgotten by the dedup window, a stored event may
// have lost its key, or a later event may have taken it: not damage then.
func (c *indexCheck) eventKeys() {
	r := c.rep
	seen := c.tx.Bucket(bucketSeen)
	_ = c.tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
		e, _, err := decodeEventValue(u64(k), v)
		if err != nil {
			return nil // reported by events
		}
		key := appendSeenKey(nil, e.Topic, e.EventID)
		locs := bloom.Locations(key, c.k)
		var seq uint64
		found := false
		for i, run := range c.runs {
			if !c.filters[i].TestLocations(locs) {
				continue
			}
			if b := seen.Bucket(runName(run.id)); b != nil {
				if seq, found = runFind(b, key); found {
					break
				}
			}
		}
		switch {
		case r.Forgotten > 0:
		case !found:
			r.add(fmt.Sprintf("events seq %d", u64(k)), "key (%q, %q) is not in the seen set", e.Topic, e.EventID)
		case seq != u64(k):
			r.add(fmt.Sprintf("events seq %d", u64(k)), "the seen set has key (%q, %q) with seq %d", e.Topic, e.EventID, seq)
		}
		return nil
	})
}

// settings checks that the named cursors and the retention overrides
// decode.
func (c *indexCheck) settings() {
	_ = c.tx.Bucket(bucketConsumers).ForEach(func(k, v []byte) error {
		if _, err := decodeCursorValue(string(k), v); err != nil {
			c.rep.add(fmt.Sprintf("consumers/%s", k), "%v", err)
		}
		return nil
	})
	if b := c.tx.Bucket(bucketRetention); b != nil {
		_ = b.ForEach(func(k, v []byte) error {
			if _, err := decodeOverride(v); err != nil {
				c.rep.add(fmt.Sprintf("retention/%s", k), "%v", err)
			}
			return nil
		})
	}
}
