package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
)

// Filter snapshot. Close writes the front filter and every run filter into
// the "filters" bucket together with the checkpoint they cover. Open uses it
// only when that checkpoint equals the database's (nothing was applied
// since, so the filters hold every stored key) and everything decodes with
// a good checksum; otherwise (a crash, a failed snapshot, other settings) it
// rebuilds the filters by scanning the seen set. A snapshot is a few large
// values, read sequentially, where a scan reads every block of every run.
var (
	bucketFilters = []byte("filters")

	snapCheckpoint = []byte("checkpoint")
	snapFront      = []byte("front")
	snapCapacity   = []byte("capacity")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func snapRunKey(id uint64) []byte { return append([]byte("run/"), runName(id)...) }

// encodeFilter: m, k (uint64 big-endian), the bit words (little-endian), CRC-32C.
func encodeFilter(f *bloom.BloomFilter) []byte {
	words := f.BitSet().Words()
	b := make([]byte, 0, 16+8*len(words)+4)
	b = binary.BigEndian.AppendUint64(b, uint64(f.Cap()))
	b = binary.BigEndian.AppendUint64(b, uint64(f.K()))
	for _, w := range words {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadSnapshot = errors.New("bad filter snapshot")

// decodeFilter copies a filter out of b (which may live in the mmap).
func decodeFilter(b []byte, k uint) (*bloom.BloomFilter, error) {
	if len(b) < 20 || (len(b)-20)%8 != 0 {
		return nil, errBadSnapshot
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, fmt.Errorf("%w: checksum", errBadSnapshot)
	}
	m, kk := binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
	words := make([]uint64, (len(body)-16)/8)
	if m == 0 || uint(kk) != k || m > uint64(len(words))*64 {
		return nil, fmt.Errorf("%w: parameters", errBadSnapshot)
	}
	for i := range words {
		words[i] = binary.LittleEndian.Uint64(body[16+8*i:])
	}
	return bloom.FromWithM(words, uint(m), uint(kk)), nil
}

// writeSnapshot stores the filters; the caller holds applyMu (or is Close).
func (s *Store) writeSnapshot() error {
	s.bloom.mu.Lock()
	front, capacity := encodeFilter(s.bloom.f), s.bloom.capacity
	s.bloom.mu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketFilters) != nil {
			if err := tx.DeleteBucket(bucketFilters); err != nil {
				return err
			}
		}
		b, err := tx.CreateBucket(bucketFilters)
		if err != nil {
			return err
		}
		if err := b.Put(snapFront, front); err != nil {
			return err
		}
		if err := b.Put(snapCapacity, putU64(uint64(capacity))); err != nil {
			return err
		}
		for _, r := range s.runs {
			if err := b.Put(snapRunKey(r.id), encodeFilter(r.f)); err != nil {
				return err
			}
		}
		return b.Put(snapCheckpoint, putU64(s.checkpoint.Load()))
	})
}

// loadSnapshot returns the front filter and its capacity and fills the run
// filters, or ok=false when there is no usable snapshot for this state.
//
// A snapshot whose filter was sized for fewer keys than are stored is not
// used; one sized for fewer than Options.ExpectedKeys is (it grows in the
// background once the stored keys pass its capacity).
func (s *Store) loadSnapshot() (front *bloom.BloomFilter, capacity uint, ok bool) {
	runFilters := make([]*bloom.BloomFilter, len(s.runs))
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFilters)
		if b == nil {
			return errBadSnapshot
		}
		cp := b.Get(snapCheckpoint)
		if cp == nil || u64(cp) != s.checkpoint.Load() {
			return fmt.Errorf("%w: checkpoint", errBadSnapshot)
		}
		capacity = uint(u64(b.Get(snapCapacity)))
		if uint64(capacity) < s.keys.Load() {
			return fmt.Errorf("%w: capacity", errBadSnapshot)
		}
		var err error
		if front, err = decodeFilter(b.Get(snapFront), s.k); err != nil {
			return err
		}
		for i, r := range s.runs {
			if runFilters[i], err = decodeFilter(b.Get(snapRunKey(r.id)), s.k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, errBadSnapshot) {
			s.logger.Warn("dedup: read filter snapshot", "err", err)
		}
		return nil, 0, false
	}
	for i := range s.runs {
		s.runs[i].f = runFilters[i]
	}
	return front, capacity, true
}
