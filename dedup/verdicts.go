package dedup

import (
	"errors"
	"fmt"
	"sync"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// verdictRingSize is how many of the most recent records' verdicts are kept
// in memory (16 bytes each): a publisher that waits for its batch to be
// applied finds them there; older ones are looked up in the index.
const verdictRingSize = 1 << 18

const dupBit = 1 << 63

// verdictRing keeps the verdicts of the last records applied, by offset.
type verdictRing struct {
	mu    sync.RWMutex
	slots []verdictSlot
}

type verdictSlot struct {
	offset uint64 // 0: empty
	seq    uint64 // with dupBit for a duplicate
}

func (r *verdictRing) init(size int) { r.slots = make([]verdictSlot, size) }

// put records the verdicts of a committed chunk.
func (r *verdictRing) put(c *chunk) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := uint64(len(r.slots))
	for i := range c.work {
		seq := c.seqs[i]
		if c.dup[i] {
			seq |= dupBit
		}
		r.slots[c.work[i].Offset%n] = verdictSlot{offset: c.work[i].Offset, seq: seq}
	}
}

// get returns the verdicts of offsets first to last, or false when one of
// them is no longer (or not yet) in the ring.
func (r *verdictRing) get(first, last uint64) ([]event.Verdict, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := uint64(len(r.slots))
	if last < first || last-first >= n {
		return nil, false
	}
	out := make([]event.Verdict, 0, last-first+1)
	for o := first; o <= last; o++ {
		sl := r.slots[o%n]
		if sl.offset != o {
			return nil, false
		}
		out = append(out, event.Verdict{Offset: o, Seq: sl.seq &^ dupBit, Duplicate: sl.seq&dupBit != 0})
	}
	return out, true
}

// Verdicts returns what the index made of the records at offsets first to
// last, which hold events (in offset order): new, with its seq, or a
// duplicate, with the seq of the event it duplicates (also when that one came
// earlier in the same range). The offsets must be applied (Checkpoint() >=
// last). Recent records are answered from memory; older ones are looked up
// by key in the index.
func (s *Store) Verdicts(first, last uint64, events []event.Event) ([]event.Verdict, error) {
	if last < first || uint64(len(events)) != last-first+1 {
		return nil, fmt.Errorf("verdicts: %d events for offsets %d to %d", len(events), first, last)
	}
	if cp := s.Checkpoint(); cp < last {
		return nil, fmt.Errorf("verdicts: offset %d is not applied yet (checkpoint %d)", last, cp)
	}
	if v, ok := s.verdicts.get(first, last); ok {
		return v, nil
	}
	out := make([]event.Verdict, len(events))
	err := s.db.View(func(tx *bolt.Tx) error {
		runs, err := loadRuns(tx, 0)
		if err != nil {
			return err
		}
		for i := range events {
			out[i], err = lookupVerdict(tx, runs, first+uint64(i), &events[i])
			if err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return nil, ErrClosed
	}
	return out, err
}

// lookupVerdict finds the seq the key of e is stored with: the record at
// offset is new if that event was read from it, else a duplicate.
func lookupVerdict(tx *bolt.Tx, runs []runInfo, offset uint64, e *event.Event) (event.Verdict, error) {
	v := event.Verdict{Offset: offset}
	if e.Topic == "" || e.EventID == "" || len(e.Topic)+len(e.EventID) > maxKeyLen {
		return v, nil // malformed
	}
	k := appendSeenKey(nil, e.Topic, e.EventID)
	seen := tx.Bucket(bucketSeen)
	for _, r := range runs {
		b := seen.Bucket(runName(r.id))
		if b == nil {
			return v, fmt.Errorf("run %d missing", r.id)
		}
		if seq, ok := runFind(b, k); ok {
			v.Seq = seq
			break
		}
	}
	if v.Seq == 0 {
		return v, fmt.Errorf("offset %d: key not in the seen set: %w", offset, ErrVerdictUnknown)
	}
	events := tx.Bucket(bucketEvents)
	val := events.Get(appendSeqKey(nil, v.Seq))
	if val == nil {
		// Expired. Seqs follow offsets: when a stored event with a later
		// seq has an earlier offset, the original came before this record,
		// which is then a duplicate; otherwise it cannot be told.
		c := events.Cursor()
		if k, nv := c.Seek(appendSeqKey(nil, v.Seq+1)); k != nil {
			if st, _, err := decodeEventValue(u64(k), nv); err == nil && st.Offset < offset {
				v.Duplicate = true
				return v, nil
			}
		}
		return v, fmt.Errorf("offset %d: %w", offset, ErrVerdictUnknown)
	}
	st, _, err := decodeEventValue(v.Seq, val)
	if err != nil {
		return v, err
	}
	v.Duplicate = st.Offset != offset
	return v, nil
}

// ErrVerdictUnknown is returned (wrapped) by Verdicts for an old record
// whose verdict the index can no longer tell: its event expired (and no
// later one shows it was a duplicate), or the dedup window forgot its key.
var ErrVerdictUnknown = errors.New("dedup: verdict no longer known")
