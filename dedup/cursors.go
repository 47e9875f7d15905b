package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultMaxCursors bounds the cursors when PutCursor is given no bound.
const DefaultMaxCursors = 1000

// ErrNoCursor is returned (wrapped) for a cursor name that does not exist.
var ErrNoCursor = fmt.Errorf("no such consumer: %w", event.ErrNotFound)

var cursorName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// event.Cursor value: version (1) | acked seq (8) | topic.
const cursorVersion1 = 1

func encodeCursorValue(acked uint64, topic string) []byte {
	v := make([]byte, 0, 9+len(topic))
	v = append(v, cursorVersion1)
	v = binary.BigEndian.AppendUint64(v, acked)
	return append(v, topic...)
}

func decodeCursorValue(name string, v []byte) (event.Cursor, error) {
	if len(v) < 9 || v[0] != cursorVersion1 {
		return event.Cursor{}, fmt.Errorf("consumer %q: bad stored value", name)
	}
	return event.Cursor{Name: name, Acked: binary.BigEndian.Uint64(v[1:]), Topic: string(v[9:])}, nil
}

func checkCursorName(name string) error {
	if !cursorName.MatchString(name) {
		return event.Errorf(event.Invalid, "consumer name must be 1 to 64 of A-Z a-z 0-9 . _ -")
	}
	return nil
}

// PutCursor creates the cursor name on topic ("" for all topics) at seq 0,
// unless it exists: then it returns it as it is (created false), or a
// Conflict error when it exists for another topic. It refuses a new cursor
// past maxCursors (<= 0: DefaultMaxCursors) with a Conflict error. The
// cursor is durable when PutCursor returns.
func (s *Store) PutCursor(name, topic string, maxCursors int) (c event.Cursor, created bool, err error) {
	if err := checkCursorName(name); err != nil {
		return event.Cursor{}, false, err
	}
	if maxCursors <= 0 {
		maxCursors = DefaultMaxCursors
	}
	err = s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketConsumers)
		if v := b.Get([]byte(name)); v != nil {
			if c, err = decodeCursorValue(name, v); err != nil {
				return err
			}
			if c.Topic != topic {
				return event.Errorf(event.Conflict, "consumer %q exists for topic %q", name, c.Topic)
			}
			return nil
		}
		if n := b.Stats().KeyN; n >= maxCursors {
			return event.Errorf(event.Conflict, "there are %d consumers, the most allowed: delete one first", n)
		}
		created, c = true, event.Cursor{Name: name, Topic: topic}
		return b.Put([]byte(name), encodeCursorValue(0, topic))
	})
	if err != nil {
		return event.Cursor{}, false, err
	}
	c, err = s.withPending(c)
	return c, created, err
}

// GetCursor returns the cursor name with its pending count.
func (s *Store) GetCursor(name string) (event.Cursor, error) {
	if err := checkCursorName(name); err != nil {
		return event.Cursor{}, err
	}
	var c event.Cursor
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketConsumers).Get([]byte(name))
		if v == nil {
			return ErrNoCursor
		}
		var err error
		c, err = decodeCursorValue(name, v)
		return err
	})
	if err != nil {
		return event.Cursor{}, err
	}
	return s.withPending(c)
}

// AckCursor moves the cursor name to max(acked, seq), durably before it
// returns. A seq past the last applied one is refused (Invalid): it would
// skip events not seen yet.
func (s *Store) AckCursor(name string, seq uint64) (event.Cursor, error) {
	if err := checkCursorName(name); err != nil {
		return event.Cursor{}, err
	}
	if last := s.LastSeq(); seq > last {
		return event.Cursor{}, event.Errorf(event.Invalid, "seq %d is after the last seq %d", seq, last)
	}
	var c event.Cursor
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketConsumers)
		v := b.Get([]byte(name))
		if v == nil {
			return ErrNoCursor
		}
		var err error
		if c, err = decodeCursorValue(name, v); err != nil {
			return err
		}
		if seq <= c.Acked {
			return nil
		}
		c.Acked = seq
		return b.Put([]byte(name), encodeCursorValue(seq, c.Topic))
	})
	if err != nil {
		return event.Cursor{}, err
	}
	return s.withPending(c)
}

// DeleteCursor removes the cursor name, durably before it returns.
func (s *Store) DeleteCursor(name string) error {
	if err := checkCursorName(name); err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketConsumers)
		if b.Get([]byte(name)) == nil {
			return ErrNoCursor
		}
		return b.Delete([]byte(name))
	})
}

// withPending fills c.Pending: the stored events after c.Acked, of c.Topic
// when set (its lifetime count minus the ordinal before the first stored
// event after Acked), in O(1) B+tree seeks. Expired events are not pending:
// they can no longer be read.
func (s *Store) withPending(c event.Cursor) (event.Cursor, error) {
	if c.Topic == "" {
		c.Pending = behind(s.LastSeq(), max(c.Acked, s.firstSeq.Load()-1))
		return c, nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		count := u64(tx.Bucket(bucketTopics).Get([]byte(c.Topic)))
		b := tx.Bucket(bucketBySeq).Bucket([]byte(c.Topic))
		if b == nil {
			return nil
		}
		if k, v := b.Cursor().Seek(appendSeqKey(nil, c.Acked+1)); k != nil {
			c.Pending = behind(count+1, u64(v)) // ordinals u64(v) to count
		}
		return nil
	})
	return c, err
}

// behind returns a-b, or 0 when b is not below a.
func behind(a, b uint64) uint64 {
	if a <= b {
		return 0
	}
	return a - b
}

// view and update run fn in a read or write transaction, mapping a closed
// database to ErrClosed.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return closedErr(s.db.View(fn))
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return closedErr(s.db.Update(fn))
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
