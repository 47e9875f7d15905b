package dedup

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Format 2 (the release before format 3, commit 234755c) kept the events in
// idx/<topic> keyed by (timestamp, offset) with the encoded event as value,
// had no seqs, and its seen set's blocks held keys without seqs. Upgrade
// converts such an index by storing its events again, in offset order,
// through the same code as Apply: seqs come out in offset order, as the
// consumer would have given them.
var bucketIdxV2 = []byte("idx")

// ErrUpToDate is returned by Upgrade for an index of the current format.
var ErrUpToDate = errors.New("dedup: index is of the current format already")

// UpgradeReport says what Upgrade converted.
type UpgradeReport struct {
	FromFormat uint64
	Events     uint64 // events carried over (each got a seq: 1..Events in offset order)
	Topics     int
	Checkpoint uint64
	Duplicates uint64
	Malformed  uint64
}

// v2Event locates one stored event of a format-2 index.
type v2Event struct {
	key   [idxKeyLen]byte // (timestamp, offset)
	topic uint32          // index into the topic names
}

func (e *v2Event) offset() uint64 { return u64(e.key[tsKeyLen:]) }

// Upgrade converts the format-2 index at oldPath into a new index of this
// format at newPath (which must not exist): every stored event with a seq
// in offset order, its apply time the time of the upgrade, the seen set
// rebuilt from the events with their seqs, the counters and the checkpoint
// carried over. It reads oldPath only, and checks the new file
// (CheckIndex) before it returns. It needs about 24 bytes of memory per
// stored event. ErrUpToDate: oldPath is of this format already.
func Upgrade(oldPath, newPath string, opts *Options) (UpgradeReport, error) {
	var rep UpgradeReport
	if err := CheckFile(oldPath); err != nil {
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	if _, err := os.Stat(newPath); err == nil {
		return rep, fmt.Errorf("upgrade: %s exists", newPath)
	}
	o := opts.withDefaults()
	old, err := bolt.Open(oldPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: o.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return rep, fmt.Errorf("upgrade %s: %w", oldPath, ErrLocked)
	}
	if err != nil {
		return rep, fmt.Errorf("upgrade: open %s: %w", oldPath, err)
	}
	defer old.Close()
	err = old.View(func(tx *bolt.Tx) error {
		var err error
		rep, err = upgradeV2(tx, newPath, opts)
		return err
	})
	if err != nil {
		_ = os.Remove(newPath)
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	check, err := CheckIndex(newPath, o.LockTimeout)
	if err == nil && !check.Clean() {
		err = fmt.Errorf("the new index fails its check: %v", check.Findings)
	}
	if err != nil {
		_ = os.Remove(newPath)
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	return rep, nil
}

// upgradeV2 reads the format-2 index in tx and writes the new one.
func upgradeV2(tx *bolt.Tx, newPath string, opts *Options) (UpgradeReport, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return UpgradeReport{}, fmt.Errorf("%w: not an index (no meta bucket)", ErrFormat)
	}
	rep := UpgradeReport{FromFormat: u64(meta.Get(metaVersion)), Checkpoint: u64(meta.Get(metaCheckpoint)),
		Duplicates: u64(meta.Get(metaDuplicates)), Malformed: u64(meta.Get(metaMalformed))}
	switch rep.FromFormat {
	case formatVersion:
		return rep, ErrUpToDate
	case 2:
	default:
		return rep, &FormatError{Path: tx.DB().Path(), Version: rep.FromFormat}
	}
	unique := u64(meta.Get(metaUnique))
	if keys, err := v2Keys(tx); err != nil || keys != unique {
		return rep, fmt.Errorf("format 2 seen set holds %d keys, the counter says %d unique events (%v)", keys, unique, err)
	}
	topics, stored, err := v2Events(tx)
	if err != nil {
		return rep, err
	}
	if uint64(len(stored)) != unique {
		return rep, fmt.Errorf("format 2 index holds %d events, its counter says %d", len(stored), unique)
	}
	rep.Events, rep.Topics = unique, len(topics)
	o := Options{}
	if opts != nil {
		o = *opts
	}
	o.ExpectedKeys = max(o.ExpectedKeys, uint(unique))
	s, err := Open(newPath, &o)
	if err != nil {
		return rep, err
	}
	err = s.importV2(tx, topics, stored)
	if err == nil {
		err = s.setCounters(rep.Checkpoint, rep.Duplicates, rep.Malformed)
	}
	return rep, errors.Join(err, s.Close())
}

// v2Keys counts the keys of a format-2 seen set (its run entries hold the
// number of keys, 8 bytes).
func v2Keys(tx *bolt.Tx) (uint64, error) {
	runs := tx.Bucket(bucketRuns)
	if runs == nil {
		return 0, fmt.Errorf("%w: format 2 index without runs bucket", ErrFormat)
	}
	var n uint64
	err := runs.ForEach(func(k, v []byte) error {
		if len(v) != oldRunEntryLen {
			return fmt.Errorf("bad run entry %x", k)
		}
		n += u64(v)
		return nil
	})
	return n, err
}

// v2Events lists the stored events of a format-2 index in offset order,
// checking each topic's count.
func v2Events(tx *bolt.Tx) ([]string, []v2Event, error) {
	idx, counts := tx.Bucket(bucketIdxV2), tx.Bucket(bucketTopics)
	if idx == nil || counts == nil {
		return nil, nil, fmt.Errorf("%w: format 2 index without idx or topics bucket", ErrFormat)
	}
	var topics []string
	var stored []v2Event
	err := idx.ForEach(func(name, _ []byte) error {
		b := idx.Bucket(name)
		if b == nil {
			return fmt.Errorf("idx/%q is not a bucket", name)
		}
		t := uint32(len(topics))
		topics = append(topics, string(name))
		n := uint64(0)
		err := b.ForEach(func(k, _ []byte) error {
			if _, _, ok := parseIdxKey(k); !ok {
				return fmt.Errorf("idx/%q: bad key %x", name, k)
			}
			e := v2Event{topic: t}
			copy(e.key[:], k)
			stored = append(stored, e)
			n++
			return nil
		})
		if err == nil && n != u64(counts.Get(name)) {
			err = fmt.Errorf("topic %q holds %d events, its count says %d", name, n, u64(counts.Get(name)))
		}
		return err
	})
	slices.SortFunc(stored, func(a, b v2Event) int { return cmp.Compare(a.offset(), b.offset()) })
	return topics, stored, err
}

// importV2 stores the events of the old index in offset order, a chunk at
// a time, each chunk in one transaction as Apply does.
func (s *Store) importV2(tx *bolt.Tx, topics []string, stored []v2Event) error {
	idx := tx.Bucket(bucketIdxV2)
	for len(stored) > 0 {
		n := min(len(stored), DefaultChunkEntries)
		entries := make([]Entry, n)
		for i := range entries {
			e := &stored[i]
			v := idx.Bucket([]byte(topics[e.topic])).Get(e.key[:])
			ev, err := event.Decode(v)
			if err != nil {
				return fmt.Errorf("event at offset %d: %w", e.offset(), err)
			}
			entries[i] = Entry{Offset: e.offset(), Event: ev}
		}
		if err := s.importChunk(entries); err != nil {
			return err
		}
		stored = stored[n:]
	}
	return nil
}

// importChunk stores entries as Apply would, but their offsets may have
// gaps (the duplicates and malformed entries of the old index left none):
// each must be a new, valid event.
func (s *Store) importChunk(work []Entry) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	for i := range work {
		if work[i].Offset <= s.checkpoint.Load() || (i > 0 && work[i].Offset <= work[i-1].Offset) {
			return fmt.Errorf("%w: offset %d", ErrOutOfOrder, work[i].Offset)
		}
	}
	c := newChunk(work, s.k)
	c.appliedAt = max(s.now().UnixNano(), s.lastApplied)
	c.testBloom(s.bloom)
	runs, nextRun := s.runs, s.nextRun
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		runs, nextRun, err = s.commitChunk(tx, c, runs, nextRun)
		if err == nil && (c.dups > 0 || c.malformed > 0) {
			err = fmt.Errorf("%d duplicate and %d malformed events among the stored ones", c.dups, c.malformed)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store events: %w", err)
	}
	s.committed(c, runs, nextRun)
	return nil
}

// setCounters writes the checkpoint and the duplicate and malformed
// counters of the old index.
func (s *Store) setCounters(checkpoint, duplicates, malformed uint64) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		for _, kv := range []struct {
			k []byte
			v uint64
		}{{metaCheckpoint, checkpoint}, {metaDuplicates, duplicates}, {metaMalformed, malformed}} {
			if err := meta.Put(kv.k, putU64(kv.v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write counters: %w", err)
	}
	s.checkpoint.Store(checkpoint)
	return nil
}
