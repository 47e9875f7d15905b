package dedup

import (
	"errors"
	"fmt"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Topics returns up to limit topics (in byte order) after the topic after
// ("": from the first), with their counts, and whether more follow. A call
// costs O(limit), whatever the number of topics.
func (s *Store) Topics(after string, limit int) ([]event.TopicCount, bool, error) {
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	if limit <= 0 {
		limit = event.DefaultListLimit
	}
	var out []event.TopicCount
	more := false
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTopics).Cursor()
		k, v := c.First()
		if after != "" {
			if k, v = c.Seek([]byte(after)); k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			if len(out) == limit {
				more = true
				break
			}
			out = append(out, event.TopicCount{Topic: string(k), Count: u64(v)})
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return nil, false, ErrClosed
		}
		return nil, false, fmt.Errorf("list topics: %w", err)
	}
	return out, more, nil
}

// HasTopic reports whether topic has a stored event.
func (s *Store) HasTopic(topic string) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketTopics).Get([]byte(topic)) != nil
		return nil
	})
	return ok, err
}
