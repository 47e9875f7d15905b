// Package wal is the durable write path of the aggregator: a segmented
// write-ahead log on github.com/tidwall/wal with group commit, a checksum in
// every record and repair of torn tails.
//
// # Offsets
//
// Every record gets an offset (a tidwall/wal index): they start at 1, are
// contiguous and never restart, also after TruncateFront removed the front of
// the log. An offset is a record's identity.
//
// # Group commit
//
// Append may be called from many goroutines. One writer goroutine takes
// everything pending (bounded by Options.MaxBatchRecords and MaxBatchBytes),
// writes it with one tidwall/wal WriteBatch and one fsync of the tail segment
// (plus a directory fsync when a segment was created), then answers all of
// those callers. With Options.PipelineBytes set, when that much is already
// queued, the fsync is handed to a syncer goroutine and the writer writes the
// next commit into the page cache meanwhile; commit k+1 is fsynced, and k+2
// written, only after k's fsync returned. The contract:
//
//   - Append returns offsets only after the fsync that covers its records
//     succeeded and the segment it wrote to was found still linked (one
//     fstat per commit); it never acknowledges anything earlier.
//   - A call's records get consecutive offsets, in the order given, and are
//     never split between two commits.
//   - If the caller's context ends before the writer took the records, they
//     are not written and the call returns ctx.Err(). Once taken, the call
//     waits for the fsync and returns its outcome.
//   - If a write or fsync fails, no caller of that commit (nor of the one
//     written behind it) is acknowledged; each gets an error wrapping
//     ErrUnavailable and the I/O error. The
//     writer then closes tidwall/wal, cuts the files back to the last
//     acknowledged record, fsyncs, checks with a test write that the disk
//     takes data, and reopens. Until that succeeds, appends are refused with
//     ErrUnavailable and Writable reports the cause; every Append retries
//     the recovery, and so does the writer every Options.RetryInterval.
//
// # Removed files
//
// A deleted file takes fsynced writes without error and is gone at the next
// start. So the writer checks after every fsync that the tail segment still
// has a link, and every second (and TruncateFront before it frees a
// segment) that the directory, the tail segment's name and every path given
// to Watch are still the files they were. When one was removed or replaced,
// the log refuses appends and TruncateFront with ErrRemoved for good: it
// never recreates the directory, which would restart the offsets.
//
// tidwall/wal runs with NoSync: the writer fsyncs the tail segment through
// its own file handle, so tidwall/wal's lock is never held across an fsync.
// Readers never take that lock at all.
//
// # Records
//
// Each tidwall/wal entry (a uvarint length and data) holds one record frame:
// a version byte, a flags byte (first record of a group commit), the offset
// (8 bytes) and a CRC-32C over those and the body (4 bytes), then the body.
// Every read verifies it.
//
// # Opening and repair
//
// Open verifies every record of every segment and that each segment begins
// where the previous one ended. A last segment that ends in a partial or
// failing record, without intact starts of two later group commits behind
// it, is a torn write (its fsync never returned, nothing of it was
// acknowledged): Open cuts it back to the last intact record, logs a warning
// with the segment, offset and byte count, fsyncs and opens. Damage anywhere
// else is in an acknowledged record: Open fails with a *CorruptionError
// naming the segment and offset, unless Options.Repair is set, which copies
// the damaged segment to the damaged/ subdirectory and cuts the log there.
// Damage confined to the last two group commits of the last segment cannot
// be told from a torn write and is cut like one. Open reads the whole log
// once to verify it.
//
// # Reading and retention
//
// Read serves recently committed records from memory, handed over by the
// writer, and reads older ones (after a restart) from the segment files.
// Wait blocks until the writer announces a record after the given offset.
// TruncateFront removes whole segment files below a consumer's checkpoint,
// oldest first, then fsyncs the directory; it does not use tidwall/wal's
// TruncateFront, which copies the segment holding the new first record
// while holding the lock that appends need. Options.RetainBytes and
// RetainAge keep such segments as an archive of applied records, bounded by
// the log's bytes or the segments' age, or without bound: then the log
// holds every record from offset 1 on.
//
// # Offline tools
//
// Create makes an empty log whose first offset is given (a data directory
// restored from an index snapshot continues its offsets), LockDir takes the
// lock an open Log holds, and Check verifies a log read-only and reports
// its damage and torn tail instead of cutting or refusing.
package wal
