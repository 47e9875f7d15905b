package wal

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// segment is one segment file as the Log knows it.
type segment struct {
	index uint64 // offset of its first record (the 20-digit file name)
	path  string
	size  int64 // bytes; for the tail segment, the durable (acknowledged) size
}

// damagedDir is the subdirectory where the Repair option keeps copies of the
// segments it cut (directories in the log directory are not segments).
const damagedDir = "damaged"

// listSegments returns the segment files of dir in offset order. It refuses
// a directory holding one of tidwall/wal's temporary files (see
// parseSegmentName).
func listSegments(dir string) ([]segment, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list segments: %w", err)
	}
	var segs []segment
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		index, ok, temp := parseSegmentName(e.Name())
		if temp {
			return nil, fmt.Errorf("list segments: unexpected temporary file %s", e.Name())
		}
		if ok {
			segs = append(segs, segment{index: index, path: filepath.Join(dir, e.Name())})
		}
	}
	slices.SortFunc(segs, func(a, b segment) int { return cmp.Compare(a.index, b.index) })
	return segs, nil
}

// Segment is one segment file of a log directory.
type Segment struct {
	Path        string // the file
	FirstOffset uint64 // offset of its first record
}

// Segments returns the segment files of the log in dir, oldest first (the
// last one is the tail, where appends go). It reads the directory only: the
// files are not opened or verified, and the log may be open or not.
func Segments(dir string) ([]Segment, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	out := make([]Segment, len(segs))
	for i, s := range segs {
		out[i] = Segment{Path: s.path, FirstOffset: s.index}
	}
	return out, nil
}

// scanSegment verifies the records of a segment whose first record has offset
// first. It returns the number of intact records, the length of the intact
// prefix in bytes, and why the record after that prefix failed (nil when the
// whole buffer is intact).
func scanSegment(buf []byte, first uint64) (count int, good int, err error) {
	for good < len(buf) {
		_, n, _, err := decodeRecord(buf[good:], first+uint64(count))
		if err != nil {
			return count, good, err
		}
		good += n
		count++
	}
	return count, good, nil
}

// laterCommit reports whether buf holds, anywhere after byte from, intact
// records starting two different group commits with offsets above bad. The
// writer writes commit k+1 while commit k is being fsynced, but writes k+2
// only after k's fsync returned. So two later commits prove that the
// damaged record at offset bad was acknowledged: the damage is not a torn
// write and must not be cut silently.
func laterCommit(buf []byte, from int, bad uint64) bool {
	maxOffset := bad + uint64(len(buf)-from)/headerSize + 1
	var seen uint64
	for q := from + 1; q < len(buf); q++ {
		data, _, err := nextEntry(buf[q:])
		if err != nil || len(data) < headerSize || data[0] != recordVersion ||
			data[1] != flagBatchStart {
			continue
		}
		off := binary.LittleEndian.Uint64(data[2:10])
		if off <= bad || off > maxOffset || off == seen {
			continue
		}
		if _, _, err := decodeFrame(data); err != nil {
			continue
		}
		if seen != 0 {
			return true
		}
		seen = off
	}
	return false
}

// damage describes a record that failed its check at Open.
type damage struct {
	seg    int   // index into the segment list
	pos    int64 // byte position of the damaged record in that segment
	offset uint64
	err    error
}

// checkSegments reads and verifies every segment. It cuts a torn tail off the
// last segment (logging it), and returns the first damage in an acknowledged
// record, if any. On success the sizes in segs are filled in and the offset
// of the last record is returned.
func (l *Log) checkSegments(segs []segment) (last uint64, dmg *damage, err error) {
	for i := range segs {
		s := &segs[i]
		buf, err := os.ReadFile(s.path)
		if err != nil {
			return 0, nil, fmt.Errorf("read segment: %w", err)
		}
		count, good, reason := scanSegment(buf, s.index)
		next := s.index + uint64(count)
		isLast := i == len(segs)-1
		if reason != nil {
			if !isLast || laterCommit(buf, good, next) {
				return 0, &damage{seg: i, pos: int64(good), offset: next, err: reason}, nil
			}
			if err := cutFile(s.path, int64(good)); err != nil {
				return 0, nil, fmt.Errorf("cut torn tail: %w", err)
			}
			l.logger.Warn("wal: cut torn tail of last segment",
				logKeySegment, filepath.Base(s.path), logKeyOffset, next,
				logKeyBytes, len(buf)-good, logKeyReason, reason.Error())
		}
		s.size = int64(good)
		if !isLast && next != segs[i+1].index {
			return 0, &damage{seg: i + 1, pos: -1, offset: next, err: errSegmentCount}, nil
		}
		last = next - 1
	}
	return last, nil, nil
}

// repair handles damage found by checkSegments when Options.Repair is set:
// it copies the damaged segment into the damaged/ subdirectory, cuts it at
// the damaged record, and moves every later segment there too. It returns
// the segments that remain.
func (l *Log) repair(segs []segment, d *damage) ([]segment, error) {
	aside := filepath.Join(l.dir, damagedDir)
	if err := os.MkdirAll(aside, 0o700); err != nil {
		return nil, fmt.Errorf("repair: %w", err)
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
	keep := d.seg
	if d.pos >= 0 {
		s := segs[d.seg]
		dst := filepath.Join(aside, filepath.Base(s.path)+"."+stamp)
		if err := copyFile(s.path, dst); err != nil {
			return nil, fmt.Errorf("repair: copy segment aside: %w", err)
		}
		if err := cutFile(s.path, d.pos); err != nil {
			return nil, fmt.Errorf("repair: %w", err)
		}
		keep = d.seg + 1
	}
	for _, s := range segs[keep:] {
		dst := filepath.Join(aside, filepath.Base(s.path)+"."+stamp)
		if err := os.Rename(s.path, dst); err != nil {
			return nil, fmt.Errorf("repair: move segment aside: %w", err)
		}
	}
	if err := SyncDir(aside); err != nil {
		return nil, fmt.Errorf("repair: %w", err)
	}
	if err := SyncDir(l.dir); err != nil {
		return nil, fmt.Errorf("repair: %w", err)
	}
	l.logger.Warn("wal: repaired damaged log, records from the damaged one on were cut",
		logKeySegment, filepath.Base(segs[d.seg].path), logKeyOffset, d.offset,
		logKeyReason, d.err.Error(), logKeyMovedSegments, len(segs)-keep, logKeyAside, aside)
	return segs[:keep], nil
}

// cutFile truncates the file at path to size bytes and fsyncs it. It refuses
// to extend a file.
func cutFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() < size {
		err = fmt.Errorf("%s is %d bytes, shorter than %d", filepath.Base(path), fi.Size(), size)
	}
	if err == nil && fi.Size() != size {
		err = f.Truncate(size)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// copyFile copies src to a new file dst and fsyncs it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	return errors.Join(err, out.Close())
}

// SyncDir fsyncs a directory so that file creations, renames and removals in
// it survive a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}
