package wal

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// This file holds what offline tools (restore, check, compaction, index
// rebuild) need of a log directory without a Log open on it.

// ErrNotEmpty is returned (wrapped) by Create when the directory already
// holds segment files.
var ErrNotEmpty = errors.New("wal: directory holds a log already")

// Create makes a new, empty log in dir whose first record will get offset
// firstOffset (at least 1), so that a log can continue the offsets of
// another one (a data directory restored from an index snapshot whose
// checkpoint is firstOffset-1: offsets are never given twice). It creates
// dir (mode 0700) if needed, refuses one that holds segment files
// (ErrNotEmpty), writes the empty first segment, named after firstOffset as
// tidwall/wal names segments, and fsyncs it and the directory. Open then
// opens it with FirstOffset() == firstOffset and LastOffset() ==
// firstOffset-1.
func Create(dir string, firstOffset uint64) error {
	if firstOffset == 0 {
		return errors.New("wal: create: the first offset must be at least 1")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	segs, err := listSegments(dir)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if len(segs) > 0 {
		return fmt.Errorf("create %s: %w", dir, ErrNotEmpty)
	}
	path := filepath.Join(dir, segmentName(firstOffset))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	return SyncDir(dir)
}

// LockDir takes the lock that a Log holds on dir while it is open, for
// offline tools that must not run beside one: it fails with an error
// wrapping ErrLocked when a Log (in any process) has dir open, and Open
// fails with ErrLocked while the returned lock is held. Close releases it.
// dir must exist.
func LockDir(dir string) (io.Closer, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return lockDir(dir)
}

// Report is what Check found in a log directory.
type Report struct {
	Dir         string
	Segments    int
	Bytes       int64  // bytes of the segment files
	FirstOffset uint64 // offset of the first record (LastOffset+1 when the log holds none)
	LastOffset  uint64 // offset of the last intact record (FirstOffset-1 when none)

	// Damage lists acknowledged records that fail their check (at most one
	// per segment: the records behind a damaged one cannot be told apart)
	// and breaks in the sequence of segments. Open refuses such a log
	// unless Options.Repair is set.
	Damage []*CorruptionError
	// TornTail is damage at the end of the last segment that Open takes
	// for a torn write and cuts off (nil when there is none): normal after
	// a crash, since nothing of it was acknowledged.
	TornTail *CorruptionError
}

// Clean reports whether the log has no damage (a torn tail is not damage).
func (r *Report) Clean() bool { return len(r.Damage) == 0 }

// Check verifies every record of the log in dir, read-only, as Open does,
// and reports what it found instead of cutting or refusing. It fails with
// an error wrapping ErrLocked while a Log has dir open (what it reads would
// be moving), and with fs.ErrNotExist when dir does not exist.
func Check(dir string) (Report, error) {
	rep := Report{Dir: dir}
	if _, err := os.Stat(dir); err != nil {
		return rep, fmt.Errorf("check: %w", err)
	}
	unlock, err := lockShared(dir)
	if err != nil {
		return rep, err
	}
	defer unlock()
	segs, err := listSegments(dir)
	if err != nil {
		return rep, fmt.Errorf("check: %w", err)
	}
	rep.Segments = len(segs)
	if len(segs) == 0 {
		rep.FirstOffset = 1
		return rep, nil
	}
	rep.FirstOffset = segs[0].index
	next := segs[0].index
	for i, s := range segs {
		if s.index != next {
			rep.Damage = append(rep.Damage, &CorruptionError{Segment: filepath.Base(s.path), Offset: next, Pos: -1, Err: errSegmentCount})
		}
		buf, err := os.ReadFile(s.path)
		if err != nil {
			return rep, fmt.Errorf("check: read segment: %w", err)
		}
		rep.Bytes += int64(len(buf))
		count, good, reason := scanSegment(buf, s.index)
		next = s.index + uint64(count)
		if reason != nil {
			cerr := &CorruptionError{Segment: filepath.Base(s.path), Offset: next, Pos: int64(good), Err: reason}
			if i == len(segs)-1 && !laterCommit(buf, good, next) {
				rep.TornTail = cerr
			} else {
				rep.Damage = append(rep.Damage, cerr)
			}
		}
	}
	rep.LastOffset = next - 1
	return rep, nil
}

// lockShared takes <dir>/LOCK shared, if the file exists, so that Check
// refuses a directory an open Log holds; it creates nothing.
func lockShared(dir string) (unlock func(), err error) {
	f, err := os.Open(filepath.Join(dir, "LOCK"))
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("check: lock: %w", err)
	}
	if err := flockShared(f); err != nil {
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("check %s: %w", dir, err)
		}
		return nil, fmt.Errorf("check: lock: %w", err)
	}
	return func() { f.Close() }, nil
}
