package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	twal "github.com/tidwall/wal"
)

// This file holds everything the package relies on about
// github.com/tidwall/wal: its file naming, its entry format, where it cuts
// segments, and how it must be opened and closed. Nothing outside this file
// (and nothing outside the package) knows these rules; the rest of the
// package works with segments, offsets and record frames.
//
// tidwall/wal is used for what it does well, appending entries to segment
// files and starting a new segment when the tail is full. It runs with
// NoSync: the writer fsyncs the tail through its own handle (tidwall/wal
// would fsync while holding the lock appends need), reads are served by
// this package (tidwall/wal's Read loads whole segments into its cache), and
// TruncateFront removes whole segment files itself (tidwall/wal's copies the
// segment holding the new first entry while holding that lock).

// RecordOverhead bounds the bytes a record costs in a segment file beyond
// its body: tidwall/wal's length prefix (at most a 10-byte uvarint) and the
// frame header of this package (see record.go). It lets callers bound the
// disk space that a number of records takes.
const RecordOverhead = binary.MaxVarintLen64 + headerSize

// segmentNameLen is the length of a segment file name: tidwall/wal names each
// segment after the index of its first entry, as 20 decimal digits, so that
// names sort like offsets.
const segmentNameLen = 20

func segmentName(index uint64) string { return fmt.Sprintf("%020d", index) }

// parseSegmentName returns the first offset of the segment file called
// name. ok is false for any other file.
//
// tidwall/wal also creates files named like a segment with a .START, .END or
// .TEMP suffix, in the middle of its own TruncateFront, TruncateBack and
// atomic rewrites, and completes or rolls them back at its next open. This
// package calls none of those, so finding one means another program touched
// the directory; temp is true for such a file, and the caller refuses it
// rather than letting tidwall/wal act on it.
func parseSegmentName(name string) (index uint64, ok, temp bool) {
	if len(name) < segmentNameLen {
		return 0, false, false
	}
	index, err := strconv.ParseUint(name[:segmentNameLen], 10, 64)
	if err != nil || index == 0 {
		return 0, false, false
	}
	if len(name) == segmentNameLen {
		return index, true, false
	}
	temp = strings.HasSuffix(name, ".START") || strings.HasSuffix(name, ".END") || strings.HasSuffix(name, ".TEMP")
	return 0, false, temp
}

// Entry format: tidwall/wal's binary format stores each entry as a uvarint
// of the data's length followed by the data, back to back, with no header or
// trailer in the file.

// nextEntry splits the next entry off buf. It returns the entry data and the
// total number of bytes it takes.
func nextEntry(buf []byte) (data []byte, n int, err error) {
	size, k := binary.Uvarint(buf)
	if k <= 0 {
		if k == 0 {
			return nil, 0, errTruncated
		}
		return nil, 0, errBadLength
	}
	if size > uint64(len(buf)-k) {
		return nil, 0, errTruncated
	}
	return buf[k : k+int(size)], k + int(size), nil
}

// entrySize is the number of bytes an entry of size bytes of data takes.
func entrySize(size int) int {
	var tmp [binary.MaxVarintLen64]byte
	return binary.PutUvarint(tmp[:], uint64(size)) + size
}

// cut is a segment change inside one group commit.
type cut struct {
	next     uint64 // first offset of the new segment
	prevSize int64  // final size of the segment closed before it
}

// defaultRefreshAfter is after how many segments removed by TruncateFront
// the writer reopens tidwall/wal: it keeps a small record of every segment
// it ever created (files this package removed behind its back included)
// until it is reopened.
const defaultRefreshAfter = 1024

// appender is tidwall/wal with our own handle on its tail segment. It is
// owned by the writer goroutine (and by Open before that starts and Close
// after it ended).
type appender struct {
	dir          string
	segmentSize  int
	refreshAfter int64

	tw        *twal.Log
	tail      *os.File   // the tail segment, opened by us for fsync
	retired   []*os.File // earlier tail handles, closed once no fsync uses them
	tailBytes int64      // size tidwall/wal believes the tail segment has
	batch     twal.Batch

	// Staged by add for the next write.
	first, next uint64
	cuts        []cut
	staged      int64 // predicted size of the tail after the staged entries
}

func (a *appender) options() *twal.Options {
	return &twal.Options{
		NoSync:           true, // the writer fsyncs the tail itself, outside tidwall/wal's lock
		SegmentSize:      a.segmentSize,
		LogFormat:        twal.Binary,
		SegmentCacheSize: 1,    // reads never go through tidwall/wal
		NoCopy:           true, // nor does anyone read what it caches
		AllowEmpty:       true, // a new log, or one whose records were all freed
		DirPerms:         0o700,
		FilePerms:        0o600,
	}
}

// open opens tidwall/wal on the directory and our fsync handle on the tail
// segment (of tail.size durable bytes), checks that tidwall/wal sees last as
// its last index, and fsyncs the directory (tidwall/wal creates the first
// segment of a new log).
func (a *appender) open(tail segment, last uint64) error {
	tw, err := twal.Open(a.dir, a.options())
	if err != nil {
		return fmt.Errorf("open tidwall/wal: %w", err)
	}
	f, err := os.OpenFile(tail.path, os.O_RDWR, 0)
	if err != nil {
		return errors.Join(fmt.Errorf("open tail segment: %w", err), tw.Close())
	}
	if err := SyncDir(a.dir); err != nil {
		return errors.Join(err, f.Close(), tw.Close())
	}
	a.tw, a.tail, a.tailBytes = tw, f, tail.size
	if got, err := tw.LastIndex(); err != nil || got != last {
		return errors.Join(fmt.Errorf("tidwall/wal sees last index %d, expected %d: %w", got, last, err), a.close())
	}
	return nil
}

// close closes tidwall/wal and our handles. tidwall/wal's Close fsyncs
// first and, if that fails, leaves its file open and itself open; a second
// Close then usually succeeds, since Linux reports a writeback error only
// once, and the writer has already given up on what that fsync covered.
func (a *appender) close() error {
	var err error
	if a.tw != nil {
		if err = a.tw.Close(); err != nil {
			if err2 := a.tw.Close(); err2 == nil || errors.Is(err2, twal.ErrClosed) {
				err = nil
			}
		}
		a.tw = nil
	}
	if a.tail != nil {
		err = errors.Join(err, a.tail.Close())
		a.tail = nil
	}
	return errors.Join(err, a.closeRetired())
}

// closeRetired closes the handles of former tail segments.
func (a *appender) closeRetired() error {
	var err error
	for _, f := range a.retired {
		err = errors.Join(err, f.Close())
	}
	clear(a.retired)
	a.retired = a.retired[:0]
	return err
}

// needsRefresh reports whether enough segments were removed behind
// tidwall/wal's back that it should be reopened (see defaultRefreshAfter).
func (a *appender) needsRefresh(removed int64) bool { return removed >= a.refreshAfter }

// begin starts staging the entries of one write, the first at offset first.
//
// tidwall/wal's rule, which add predicts: before a write it starts a new
// segment if the tail is already larger than SegmentSize; while writing, it
// closes the tail (fsynced) and starts a new one right after any entry that
// brings the tail to SegmentSize or more.
func (a *appender) begin(first uint64) {
	a.batch.Clear()
	a.first, a.next, a.cuts, a.staged = first, first, a.cuts[:0], a.tailBytes
	if a.staged > int64(a.segmentSize) {
		a.cuts = append(a.cuts, cut{next: first, prevSize: a.staged})
		a.staged = 0
	}
}

// add stages the next entry.
func (a *appender) add(data []byte) {
	a.batch.Write(a.next, data)
	a.staged += int64(entrySize(len(data)))
	if a.staged >= int64(a.segmentSize) {
		a.cuts = append(a.cuts, cut{next: a.next + 1, prevSize: a.staged})
		a.staged = 0
	}
	a.next++
}

// write hands the staged entries to tidwall/wal and returns the segment
// changes they made, the size of the tail after them and the handle to fsync
// for them.
func (a *appender) write() (cuts []cut, tail int64, f *os.File, err error) {
	a.tailBytes = a.staged
	if err := a.tw.WriteBatch(&a.batch); err != nil {
		return nil, 0, nil, err
	}
	if len(a.cuts) > 0 {
		// tidwall/wal fsynced and closed the segments it left behind; our
		// handle on the old tail may still be in use by the syncer.
		a.retired = append(a.retired, a.tail)
		a.tail = nil
		f, err := os.OpenFile(filepath.Join(a.dir, segmentName(a.cuts[len(a.cuts)-1].next)), os.O_RDWR, 0)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("open new segment: %w", err)
		}
		a.tail = f
	}
	return slices.Clone(a.cuts), a.staged, a.tail, nil
}
