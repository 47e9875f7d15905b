package dedup

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// CopySettings copies the named cursors and the retention overrides of the
// index file at from (opened read-only, once CheckFile passed it) into s:
// what an index rebuilt from the log cannot get from it. A cursor past s's
// last seq is moved back to it. It returns how many of each it copied.
func (s *Store) CopySettings(from string) (cursors, overrides int, err error) {
	if err := CheckFile(from); err != nil {
		return 0, 0, err
	}
	src, err := bolt.Open(from, 0o600, &bolt.Options{ReadOnly: true, Timeout: s.opts.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return 0, 0, fmt.Errorf("copy settings from %s: %w", from, ErrLocked)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("copy settings: %w", err)
	}
	defer src.Close()
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	last := s.lastSeq.Load()
	err = src.View(func(stx *bolt.Tx) error {
		if v := stx.Bucket(bucketMeta); v == nil || u64(v.Get(metaVersion)) != formatVersion {
			return fmt.Errorf("%w: %s is not an index of format %d", ErrFormat, from, formatVersion)
		}
		return s.db.Update(func(tx *bolt.Tx) error {
			var err error
			if cursors, err = copyBucket(stx, tx, bucketConsumers, func(k, v []byte) ([]byte, error) {
				c, err := decodeCursorValue(string(k), v)
				if err != nil {
					return nil, err
				}
				return encodeCursorValue(min(c.Acked, last), c.Topic), nil
			}); err != nil {
				return err
			}
			overrides, err = copyBucket(stx, tx, bucketRetention, func(_, v []byte) ([]byte, error) {
				_, err := decodeOverride(v)
				return bytes.Clone(v), err
			})
			return err
		})
	})
	if err != nil {
		return 0, 0, fmt.Errorf("copy settings: %w", err)
	}
	s.overrides, err = s.readOverrides()
	return cursors, overrides, err
}

// copyBucket copies the top-level bucket name from src to dst (replacing
// it), each value through conv.
func copyBucket(src, dst *bolt.Tx, name []byte, conv func(k, v []byte) ([]byte, error)) (int, error) {
	from := src.Bucket(name)
	if from == nil {
		return 0, nil
	}
	if dst.Bucket(name) != nil {
		if err := dst.DeleteBucket(name); err != nil {
			return 0, err
		}
	}
	to, err := dst.CreateBucket(name)
	if err != nil {
		return 0, err
	}
	n := 0
	err = from.ForEach(func(k, v []byte) error {
		nv, err := conv(k, v)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", name, k, err)
		}
		n++
		return to.Put(bytes.Clone(k), nv)
	})
	return n, err
}

// readOverrides reads the retention overrides in a transaction of its own.
func (s *Store) readOverrides() (m map[string]event.RetentionOverride, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		m, err = loadOverrides(tx)
		return err
	})
	return m, err
}
