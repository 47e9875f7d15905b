package wal

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by Append, Read, Wait, TruncateFront and Writable
	// once Close has been called.
	ErrClosed = errors.New("wal: closed")

	// ErrUnavailable is returned (wrapped together with the I/O error, so
	// errors.Is(err, syscall.ENOSPC) works too) by Append when a write or
	// fsync of its group commit failed, or when an earlier failure has not
	// been recovered from yet: the log is then refusing appends until it is
	// back at its last durable state and the disk accepts a test write.
	// Recovery is retried by every later Append and by the writer on a timer,
	// so appends resume by themselves once the cause is gone. Writable
	// reports it while appends are refused.
	ErrUnavailable = errors.New("wal: unavailable")

	// ErrRemoved is returned (wrapped, together with ErrUnavailable) by
	// Append, Writable and TruncateFront once the log found that its
	// directory, a segment it writes to or a path given to Watch was removed
	// or replaced while open (rm -rf of the data directory, a restore over
	// it): records written from then on would be gone at the next start. It
	// is final: the log never recreates the files and refuses appends until
	// it is closed and opened again, by an operator who knows what happened
	// to the files.
	ErrRemoved = errors.New("wal: files removed while open")

	// ErrOutOfRange is returned (wrapped) by Read when from is below
	// FirstOffset, because retention already removed those records, or above
	// LastOffset()+1.
	ErrOutOfRange = errors.New("wal: offset out of range")

	// ErrLocked is returned (wrapped) by Open when another Log, in this or
	// another process, has the directory open.
	ErrLocked = errors.New("wal: directory in use")
)

// CorruptionError is returned by Open when a record that was acknowledged
// (anything but a torn tail of the last segment) fails its check, and by
// Read when a record read from disk fails its check. Open with
// Options.Repair cuts the log at such a record instead.
type CorruptionError struct {
	Segment string // segment file name
	Offset  uint64 // offset of the damaged record
	Pos     int64  // byte position of the damaged record in the segment; -1 when the segment sequence itself is broken
	Err     error  // what is wrong
}

func (e *CorruptionError) Error() string {
	if e.Pos < 0 {
		return fmt.Sprintf("wal: corrupt log: segment %s: expected offset %d: %v", e.Segment, e.Offset, e.Err)
	}
	return fmt.Sprintf("wal: corrupt record: segment %s, offset %d, byte %d: %v", e.Segment, e.Offset, e.Pos, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }

// unavailable wraps an I/O error so that it matches both ErrUnavailable and
// the cause.
func unavailable(cause error) error {
	return fmt.Errorf("%w: %w", ErrUnavailable, cause)
}
