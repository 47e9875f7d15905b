package wal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// readChunk is how many records Read takes under a lock before calling fn
// for them without it.
const readChunk = 256

// Read calls fn in offset order for up to limit records starting at from
// (limit <= 0: no limit), stopping at the LastOffset of the time of the call.
// FirstOffset() <= from <= LastOffset()+1 must hold, else the error wraps
// ErrOutOfRange. data is immutable and fn may retain it. An error from fn
// stops the read and is returned as is.
//
// Records committed recently are handed over from memory; older ones are
// read from the segment files and verified (a damaged one gives a
// *CorruptionError). Read never waits for the writer.
func (l *Log) Read(from uint64, limit int, fn func(offset uint64, data []byte) error) error {
	l.mu.RLock()
	closed, first := l.closed, l.first
	l.mu.RUnlock()
	last := l.last.Load()
	if closed {
		return ErrClosed
	}
	if from < first || from > last+1 {
		return fmt.Errorf("read from %d (log holds %d to %d): %w", from, first, last, ErrOutOfRange)
	}
	end := last
	if limit > 0 && from+uint64(limit)-1 < end {
		end = from + uint64(limit) - 1
	}
	var buf [readChunk][]byte
	for off := from; off <= end; {
		n := l.cache.get(off, end, buf[:])
		if n == 0 {
			var err error
			if n, err = l.readDisk(off, end, buf[:]); err != nil {
				return err
			}
		}
		for i := range n {
			if err := fn(off, buf[i]); err != nil {
				return err
			}
			buf[i] = nil
			off++
		}
	}
	return nil
}

// Wait returns nil as soon as LastOffset() > after, ctx.Err() when ctx ends
// first, and ErrClosed once the log is closed. It is woken by the writer,
// it does not poll.
func (l *Log) Wait(ctx context.Context, after uint64) error {
	for {
		l.mu.RLock()
		closed, ch := l.closed, l.notify
		l.mu.RUnlock()
		if closed {
			return ErrClosed
		}
		if l.last.Load() > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TruncateFront removes the segment files that hold only records below
// offset (typically the consumer's checkpoint + 1), oldest first, unless
// Options.RetainBytes or RetainAge keep them as an archive. The tail segment
// is never removed, and records are only ever freed by whole segments, so it
// is cheap when nothing is to be freed; it does not block appends. Each
// removal is followed by a directory fsync.
//
// Before it removes a segment it checks the log's directory and the watched
// paths (see Watch); when one was removed or replaced, and from then on, it
// removes nothing and returns an error wrapping ErrRemoved.
func (l *Log) TruncateFront(offset uint64) error {
	l.truncMu.Lock()
	defer l.truncMu.Unlock()
	if l.frees(offset) {
		if err := l.lostErr(); err != nil {
			return fmt.Errorf("truncate front: %w", err)
		}
		if err := l.checkPaths(); err != nil {
			return fmt.Errorf("truncate front: %w", l.markLost(err))
		}
	}
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return ErrClosed
		}
		if len(l.segs) < 2 || l.segs[1].index > offset || !l.archiveFrees(l.segs) {
			l.mu.Unlock()
			break
		}
		victim := l.segs[0]
		l.segs = append(l.segs[:0:0], l.segs[1:]...)
		l.first = l.segs[0].index
		l.mu.Unlock()
		// Oldest first, each removal made durable before the next: a crash
		// part way leaves a contiguous log, also on a file system that
		// would persist removals in one directory out of order.
		if err := os.Remove(victim.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("truncate front: remove segment: %w", err)
		}
		if err := SyncDir(l.dir); err != nil {
			return fmt.Errorf("truncate front: %w", err)
		}
		l.removed.Add(1)
	}
	l.countArchived(offset)
	return nil
}

// archiveFrees reports whether the archive bounds let TruncateFront free
// segs[0], all of whose records are applied; the caller holds l.mu.
func (l *Log) archiveFrees(segs []segment) bool {
	maxBytes, maxAge := l.opts.RetainBytes, l.opts.RetainAge
	if maxBytes == 0 && maxAge == 0 {
		return true // no archive
	}
	if maxBytes > 0 {
		var total int64
		for _, s := range segs {
			total += s.size
		}
		if total > maxBytes {
			return true
		}
	}
	if maxAge > 0 {
		// A segment is not written after the next one began: its
		// modification time is the time of its last record.
		if fi, err := os.Stat(segs[0].path); err == nil && l.opts.now().Sub(fi.ModTime()) > maxAge {
			return true
		}
	}
	return false
}

// countArchived records the bytes of the segments wholly below offset that
// the archive keeps (Stats.Archived).
func (l *Log) countArchived(offset uint64) {
	if l.opts.RetainBytes == 0 && l.opts.RetainAge == 0 {
		return
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	var n int64
	for i := 0; i+1 < len(l.segs) && l.segs[i+1].index <= offset; i++ {
		n += l.segs[i].size
	}
	l.archived.Store(n)
}

// frees reports whether TruncateFront(offset) would remove a segment.
func (l *Log) frees(offset uint64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.segs) >= 2 && l.segs[1].index <= offset
}

// tailCache holds the most recently committed records, in a ring indexed by
// offset, for readers that keep up with the writer.
type tailCache struct {
	mu       sync.RWMutex
	ring     [][]byte
	first    uint64 // offset of the oldest cached record
	n        int
	bytes    int
	maxBytes int
}

func (c *tailCache) init(records, bytes int) {
	c.ring = make([][]byte, records)
	c.maxBytes = bytes
}

// push adds a group commit whose first record has offset first.
func (c *tailCache) push(first uint64, batch []*request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 || c.first+uint64(c.n) != first {
		clear(c.ring)
		c.first, c.n, c.bytes = first, 0, 0
	}
	size := uint64(len(c.ring))
	for _, r := range batch {
		for _, rec := range r.recs {
			for c.n > 0 && (c.n == len(c.ring) || c.bytes+len(rec) > c.maxBytes) {
				i := c.first % size
				c.bytes -= len(c.ring[i])
				c.ring[i] = nil
				c.first++
				c.n--
			}
			if c.n == 0 {
				c.first = first
			}
			c.ring[(c.first+uint64(c.n))%size] = rec
			c.n++
			c.bytes += len(rec)
			first++
		}
	}
}

// get copies the cached records from off up to end into dst and returns how
// many; 0 when off is not cached.
func (c *tailCache) get(off, end uint64, dst [][]byte) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.n == 0 || off < c.first || off >= c.first+uint64(c.n) {
		return 0
	}
	n := 0
	size := uint64(len(c.ring))
	for ; n < len(dst) && off <= end && off < c.first+uint64(c.n); n++ {
		dst[n] = c.ring[off%size]
		off++
	}
	return n
}

// diskReader keeps the last segment read from disk, verified, for
// sequential catch-up reads.
type diskReader struct {
	mu     sync.Mutex
	index  uint64   // first offset of the loaded segment, 0 when none
	bodies [][]byte // verified record bodies, aliasing one buffer
}

// readDisk reads records from off up to end from the segment files into dst
// (copies) and returns how many.
func (l *Log) readDisk(off, end uint64, dst [][]byte) (int, error) {
	l.mu.RLock()
	i := len(l.segs) - 1
	for i > 0 && l.segs[i].index > off {
		i--
	}
	seg := l.segs[i]
	first := l.first
	l.mu.RUnlock()
	if off < first {
		return 0, fmt.Errorf("read %d (first is %d): %w", off, first, ErrOutOfRange)
	}

	r := &l.reader
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.index != seg.index || off-seg.index >= uint64(len(r.bodies)) {
		if err := r.load(seg); err != nil {
			if errors.Is(err, fs.ErrNotExist) && off < l.FirstOffset() {
				return 0, fmt.Errorf("read %d (first is %d): %w", off, l.FirstOffset(), ErrOutOfRange)
			}
			return 0, err
		}
	}
	n := 0
	for ; n < len(dst) && off <= end && off-seg.index < uint64(len(r.bodies)); n++ {
		dst[n] = append([]byte(nil), r.bodies[off-seg.index]...)
		off++
	}
	if n == 0 {
		return 0, fmt.Errorf("read %d: segment %s ends before it: %w", off, filepath.Base(seg.path), ErrOutOfRange)
	}
	return n, nil
}

// load reads and verifies the durable part of seg.
func (r *diskReader) load(seg segment) error {
	// The slice is reused: entries past the new segment's count would
	// otherwise keep earlier segments' buffers alive.
	clear(r.bodies[:cap(r.bodies)])
	r.index, r.bodies = 0, r.bodies[:0]
	f, err := os.Open(seg.path)
	if err != nil {
		return fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	data := make([]byte, seg.size)
	if _, err := f.ReadAt(data, 0); err != nil {
		return fmt.Errorf("read segment %s: %w", filepath.Base(seg.path), err)
	}
	bodies := r.bodies
	for p, o := 0, seg.index; p < len(data); o++ {
		body, n, _, err := decodeRecord(data[p:], o)
		if err != nil {
			return &CorruptionError{Segment: filepath.Base(seg.path), Offset: o, Pos: int64(p), Err: err}
		}
		bodies = append(bodies, body)
		p += n
	}
	r.index, r.bodies = seg.index, bodies
	return nil
}
