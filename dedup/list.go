package dedup

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Cursor layout (before base64url without padding):
//
//	version (1) | kind (kindTopic or kindAll) | uvarint len(topic) | topic | idx key (20 bytes)
//
// A cursor names the last event of the previous page. A by-topic cursor is
// accepted only for the same topic, an all-topics cursor only without one.
const (
	cursorVersion = 1
	kindTopic     = 1
	kindAll       = 2
)

type cursor struct {
	kind  byte
	topic string
	key   []byte // idx key, idxKeyLen bytes
}

func encodeCursor(c cursor) string {
	b := make([]byte, 0, 2+binary.MaxVarintLen64+len(c.topic)+len(c.key))
	b = append(b, cursorVersion, c.kind)
	b = binary.AppendUvarint(b, uint64(len(c.topic)))
	b = append(b, c.topic...)
	b = append(b, c.key...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor parses a cursor made by encodeCursor. Every failure wraps
// event.ErrBadCursor.
func decodeCursor(s string) (cursor, error) {
	if len(s) > event.MaxCursorBytes {
		return cursor{}, fmt.Errorf("%w: too long", event.ErrBadCursor)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursor{}, fmt.Errorf("%w: not base64url", event.ErrBadCursor)
	}
	if len(b) < 2 || b[0] != cursorVersion || (b[1] != kindTopic && b[1] != kindAll) {
		return cursor{}, fmt.Errorf("%w: unknown version or kind", event.ErrBadCursor)
	}
	c := cursor{kind: b[1]}
	b = b[2:]
	n, w := binary.Uvarint(b)
	if w <= 0 || n == 0 || n > uint64(len(b)-w) {
		return cursor{}, fmt.Errorf("%w: topic", event.ErrBadCursor)
	}
	c.topic = string(b[w : w+int(n)])
	c.key = b[w+int(n):]
	if _, _, ok := parseIdxKey(c.key); !ok {
		return cursor{}, fmt.Errorf("%w: position", event.ErrBadCursor)
	}
	return c, nil
}

// List returns one page of stored events: of q.Topic in (timestamp, offset)
// order, or of all topics in (topic, timestamp, offset) order when q.Topic is
// empty. q.Limit <= 0 means event.DefaultListLimit; it is capped at
// event.MaxListLimit. q.Cursor is "" or the NextCursor of a previous page of
// the same query; any other cursor yields an error wrapping
// event.ErrBadCursor. Events stored after a cursor was made appear on later
// pages if they sort after it.
func (s *Store) List(q event.ListQuery) (event.Page, error) {
	page := event.Page{Events: []event.Stored{}}
	var err error
	page.NextCursor, err = s.ListFunc(q, func(e *event.Stored) bool {
		c := *e
		c.Payload = bytes.Clone(e.Payload)
		page.Events = append(page.Events, c)
		return true
	})
	if err != nil {
		return event.Page{}, err
	}
	return page, nil
}

// ListFunc is List calling take for each event of the page, in order,
// within one read transaction, instead of collecting them: take returns
// false to leave that event (and the rest) to the next page. The event's
// Payload is valid only during the call. It returns the cursor of the next
// page ("" when there are no more events).
func (s *Store) ListFunc(q event.ListQuery, take func(*event.Stored) bool) (next string, err error) {
	if s.closed.Load() {
		return "", ErrClosed
	}
	limit := q.Limit
	if limit <= 0 {
		limit = event.DefaultListLimit
	}
	limit = min(limit, event.MaxListLimit)
	var after *cursor
	if q.Cursor != "" {
		c, err := decodeCursor(q.Cursor)
		if err != nil {
			return "", err
		}
		if (q.Topic == "") != (c.kind == kindAll) || (q.Topic != "" && c.topic != q.Topic) {
			return "", fmt.Errorf("%w: made for another query", event.ErrBadCursor)
		}
		after = &c
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		it := pageIter{byTime: tx.Bucket(bucketByTime), events: tx.Bucket(bucketEvents), limit: limit,
			topicOnly: q.Topic != "", take: take, after: after}
		if err := it.run(q.Topic, after); err != nil {
			return err
		}
		next = it.next
		if s.onListSteps != nil {
			s.onListSteps(it.steps)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return "", ErrClosed
		}
		return "", fmt.Errorf("list events: %w", err)
	}
	return next, nil
}

// pageIter hands up to limit events to take and looks one further to decide
// whether there is a next page.
type pageIter struct {
	byTime, events *bolt.Bucket
	limit          int
	topicOnly      bool
	take           func(*event.Stored) bool
	taken          int
	after          *cursor // where the page starts (nil: at the beginning)
	last           cursor  // the last event taken
	next           string
	steps          int // cursor moves, for the O(limit) test
}

// run walks from the position after `after` (or the start) of topic (or of
// all topics when topic is "").
func (it *pageIter) run(topic string, after *cursor) error {
	if it.topicOnly {
		b := it.byTime.Bucket([]byte(topic))
		if b == nil {
			return nil
		}
		var key []byte
		if after != nil {
			key = after.key
		}
		_, err := it.walkTopic(topic, b, key)
		return err
	}
	tc := it.byTime.Cursor()
	var tk []byte
	var key []byte
	if after == nil {
		tk, _ = tc.First()
	} else {
		tk, _ = tc.Seek([]byte(after.topic))
		if tk != nil && string(tk) == after.topic {
			key = after.key
		}
	}
	for ; tk != nil; tk, _ = tc.Next() {
		it.steps++
		b := it.byTime.Bucket(tk)
		if b == nil {
			continue
		}
		full, err := it.walkTopic(string(tk), b, key)
		if err != nil || full {
			return err
		}
		key = nil
	}
	return nil
}

// walkTopic hands events of one topic bucket after key (from its start when
// key is nil) to take. It returns full=true once the page is complete,
// having set next when a further event exists.
func (it *pageIter) walkTopic(topic string, b *bolt.Bucket, key []byte) (full bool, err error) {
	c := b.Cursor()
	var k, v []byte
	if key == nil {
		k, v = c.First()
	} else if k, v = c.Seek(key); k != nil && bytes.Equal(k, key) {
		k, v = c.Next()
	}
	for ; k != nil; k, v = c.Next() {
		it.steps++
		if it.taken == it.limit {
			it.setNext()
			return true, nil
		}
		if _, _, ok := parseIdxKey(k); !ok || len(v) != seqKeyLen {
			return false, fmt.Errorf("topic %q: bad time index entry %x", topic, k)
		}
		seq := u64(v)
		e, _, err := decodeEventValue(seq, it.events.Get(v))
		if err != nil {
			return false, fmt.Errorf("topic %q: %w", topic, err)
		}
		if !it.take(&e) {
			it.setNext()
			return true, nil
		}
		it.taken++
		it.last = cursor{topic: topic, key: k}
	}
	return false, nil
}

// setNext makes the cursor naming the last event taken: the next page
// starts after it (where this one started when take refused the first).
func (it *pageIter) setNext() {
	kind := byte(kindAll)
	if it.topicOnly {
		kind = kindTopic
	}
	last := it.last
	if it.taken == 0 {
		if it.after == nil {
			return // refused the very first event: nothing to resume after
		}
		last = *it.after
	}
	it.next = encodeCursor(cursor{kind: kind, topic: last.topic, key: last.key})
}
