package dedup

import (
	"errors"
	"fmt"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Feed calls take for the events q selects, in ascending seq order, within
// one read transaction; take returns false to leave that event (and the
// rest) out. The event's Payload is valid only during the call. It returns
// the seq of the last event taken (q.After when none was). Each call costs
// O(Limit) B+tree steps, with a topic filter too.
func (s *Store) Feed(q event.FeedQuery, take func(*event.Stored) bool) (last uint64, err error) {
	if s.closed.Load() {
		return q.After, ErrClosed
	}
	limit := q.Limit
	if limit <= 0 {
		limit = event.DefaultListLimit
	}
	limit = min(limit, event.MaxListLimit)
	last = q.After
	err = s.db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		var c *bolt.Cursor
		if q.Topic == "" {
			c = events.Cursor()
		} else {
			b := tx.Bucket(bucketBySeq).Bucket([]byte(q.Topic))
			if b == nil {
				return nil
			}
			c = b.Cursor()
		}
		steps := 0
		for k, v := c.Seek(appendSeqKey(nil, q.After+1)); k != nil && steps < limit; k, v = c.Next() {
			steps++
			seq := u64(k)
			if q.Topic != "" {
				v = events.Get(k)
			}
			e, _, err := decodeEventValue(seq, v)
			if err != nil {
				return err
			}
			if !take(&e) {
				break
			}
			last = seq
		}
		if s.onListSteps != nil {
			s.onListSteps(steps)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return q.After, ErrClosed
		}
		return q.After, fmt.Errorf("read feed: %w", err)
	}
	return last, nil
}
