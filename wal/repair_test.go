package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// entryLoc locates one record in a segment file.
type entryLoc struct {
	pos, end int
	offset   uint64
	start    bool // first record of a group commit
}

// layout describes a closed log built by buildTemplate.
type layout struct {
	dir        string
	segs       []segment
	entries    [][]entryLoc // per segment
	last       uint64
	lastPath   string
	lastCommit uint64 // offset of the first record of the last commit
}

func locate(tb testing.TB, dir string) *layout {
	tb.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		tb.Fatal(err)
	}
	lay := &layout{dir: dir, segs: segs}
	for _, s := range segs {
		buf, err := os.ReadFile(s.path)
		if err != nil {
			tb.Fatal(err)
		}
		var locs []entryLoc
		for p, off := 0, s.index; p < len(buf); off++ {
			_, n, flags, err := decodeRecord(buf[p:], off)
			if err != nil {
				tb.Fatalf("template segment %s: %v", s.path, err)
			}
			locs = append(locs, entryLoc{pos: p, end: p + n, offset: off, start: flags&flagBatchStart != 0})
			if flags&flagBatchStart != 0 {
				lay.lastCommit = off
			}
			p += n
			lay.last = off
		}
		lay.entries = append(lay.entries, locs)
	}
	lay.lastPath = segs[len(segs)-1].path
	return lay
}

// buildTemplate writes a closed log of two segments whose last segment holds
// the end of one group commit and at least three whole ones of three records.
func buildTemplate(tb testing.TB) (*layout, map[uint64][]byte) {
	tb.Helper()
	dir := tb.TempDir()
	l, err := Open(dir, &Options{SegmentSize: 1100})
	if err != nil {
		tb.Fatal(err)
	}
	want := map[uint64][]byte{}
	for c := range 11 {
		recs := [][]byte{record(3, c, 30), record(3, c, 31), record(3, c, 32)}
		first, _ := mustAppend(tb, l, recs...)
		for i, r := range recs {
			want[first+uint64(i)] = r
		}
	}
	if err := l.Close(); err != nil {
		tb.Fatal(err)
	}
	lay := locate(tb, dir)
	last := lay.entries[len(lay.entries)-1]
	starts := 0
	for _, e := range last {
		if e.start {
			starts++
		}
	}
	if len(lay.segs) != 2 || starts < 3 || lay.last-lay.lastCommit != 2 {
		tb.Fatalf("template: %d segments, %d commits in the last one, last commit %d..%d",
			len(lay.segs), starts, lay.lastCommit, lay.last)
	}
	return lay, want
}

func copyDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := tb.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return dst
}

func editFile(tb testing.TB, path string, edit func([]byte) []byte) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, edit(b), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// breakCase is one way of damaging a log, with its expected outcome.
type breakCase struct {
	name    string
	apply   func(tb testing.TB, dir string, lay *layout)
	last    uint64 // last record that must survive (refused: after Repair)
	refused bool   // Open must fail with a *CorruptionError at offset last+1
	segment string // refused: the segment the error must name
	cut     bool   // a torn tail must be cut and logged
}

func breakCases(lay *layout) []breakCase {
	lastSeg := lay.entries[len(lay.entries)-1]
	lastRec := lastSeg[len(lastSeg)-1]
	lastName := filepath.Base(lay.lastPath)
	at := func(dir string) string { return filepath.Join(dir, lastName) }
	var cases []breakCase
	for cutAt := lastRec.pos; cutAt < lastRec.end; cutAt++ {
		cases = append(cases, breakCase{
			name: fmt.Sprintf("cut-last-record-at-byte-%d", cutAt),
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { return b[:cutAt] })
			},
			last: lay.last - 1,
			cut:  cutAt > lastRec.pos,
		})
	}
	mid := lastSeg[len(lastSeg)-2] // middle record of the last commit
	// A record of the first whole commit in the last segment (two more
	// commits follow it) and one of the commit before the last.
	var earlier, secondLast entryLoc
	for i, e := range lastSeg {
		if e.start && earlier.end == 0 {
			earlier = lastSeg[i+1]
		}
		if e.offset == lay.lastCommit-2 {
			secondLast = e
		}
	}
	prevSeg := lay.entries[0]
	prevName := filepath.Base(lay.segs[0].path)
	cases = append(cases,
		breakCase{
			name: "append-garbage",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte {
					return append(b, []byte("\x17garbage that is not a record at all, \xff\xfe\x00\x01 and more")...)
				})
			},
			last: lay.last, cut: true,
		},
		breakCase{
			name: "append-zeroes",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
			},
			last: lay.last, cut: true,
		},
		breakCase{
			name: "flip-bit-in-last-record",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { b[lastRec.end-3] ^= 0x10; return b })
			},
			last: lay.last - 1, cut: true,
		},
		breakCase{
			// An unwritten page inside the last commit, with later records of
			// the same commit intact: still a torn write.
			name: "zero-record-inside-last-commit",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { clear(b[mid.pos:mid.end]); return b })
			},
			last: mid.offset - 1, cut: true,
		},
		breakCase{
			// Commit k+1 is written while commit k is fsynced, so damage
			// followed by only one intact commit may be a torn write.
			name: "flip-bit-in-commit-before-the-last",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { b[secondLast.pos+7] ^= 0x04; return b })
			},
			last: secondLast.offset - 1, cut: true,
		},
		breakCase{
			name: "flip-bit-in-earlier-commit-of-last-segment",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, at(dir), func(b []byte) []byte { b[earlier.pos+5] ^= 0x01; return b })
			},
			last: earlier.offset - 1, refused: true, segment: lastName,
		},
		breakCase{
			name: "flip-bit-in-earlier-segment",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, filepath.Join(dir, prevName), func(b []byte) []byte { b[prevSeg[3].end-1] ^= 0x80; return b })
			},
			last: prevSeg[3].offset - 1, refused: true, segment: prevName,
		},
		breakCase{
			name: "cut-earlier-segment",
			apply: func(tb testing.TB, dir string, _ *layout) {
				editFile(tb, filepath.Join(dir, prevName), func(b []byte) []byte { return b[:len(b)-2] })
			},
			last: prevSeg[len(prevSeg)-1].offset - 1, refused: true, segment: prevName,
		},
	)
	return cases
}

func TestOpenBrokenLog(t *testing.T) {
	lay, want := buildTemplate(t)
	for _, tc := range breakCases(lay) {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, lay.dir)
			tc.apply(t, dir, lay)
			var logBuf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logBuf, nil))
			l, err := Open(dir, &Options{Logger: logger})
			if tc.refused {
				var ce *CorruptionError
				if !errors.As(err, &ce) {
					if err == nil {
						l.Close()
					}
					t.Fatalf("Open: %v, want a *CorruptionError", err)
				}
				if ce.Segment != tc.segment || ce.Offset != tc.last+1 {
					t.Fatalf("CorruptionError names segment %s offset %d, want %s offset %d", ce.Segment, ce.Offset, tc.segment, tc.last+1)
				}
				l, err = Open(dir, &Options{Logger: logger, Repair: true})
				if err != nil {
					t.Fatalf("Open with Repair: %v", err)
				}
				aside, _ := os.ReadDir(filepath.Join(dir, damagedDir))
				if len(aside) == 0 || !strings.HasPrefix(aside[0].Name(), tc.segment) {
					t.Fatalf("Repair kept no copy of %s aside: %v", tc.segment, aside)
				}
				if !strings.Contains(logBuf.String(), "repaired") {
					t.Fatalf("Repair was not logged: %s", logBuf.String())
				}
			} else if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if tc.cut != strings.Contains(logBuf.String(), "cut torn tail") {
				t.Fatalf("torn tail logged %v, want %v: %s", !tc.cut, tc.cut, logBuf.String())
			}
			if l.LastOffset() != tc.last {
				l.Close()
				t.Fatalf("LastOffset %d, want %d", l.LastOffset(), tc.last)
			}
			survivors := map[uint64][]byte{}
			for off := uint64(1); off <= tc.last; off++ {
				survivors[off] = want[off]
			}
			checkRecords(t, l, survivors)
			// The log continues where the survivors end, and reopens cleanly.
			first, _ := mustAppend(t, l, []byte("after"))
			survivors[first] = []byte("after")
			if first != tc.last+1 {
				t.Fatalf("next append got %d, want %d", first, tc.last+1)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			logBuf.Reset()
			l = openLog(t, dir, &Options{Logger: logger})
			if strings.Contains(logBuf.String(), "cut") {
				t.Fatalf("second Open cut again: %s", logBuf.String())
			}
			checkRecords(t, l, survivors)
		})
	}
}

func TestOpenRefusesSegmentGap(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, &Options{SegmentSize: 200})
	for c := range 30 {
		mustAppend(t, l, record(4, c, 20))
	}
	l.Close()
	segs, _ := listSegments(dir)
	if len(segs) < 4 {
		t.Fatalf("%d segments, want at least 4", len(segs))
	}
	if err := os.Remove(segs[1].path); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, &Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Segment != filepath.Base(segs[2].path) || ce.Offset != segs[1].index || ce.Pos != -1 {
		t.Fatalf("Open with a missing segment: %v", err)
	}
	l = openLog(t, dir, &Options{Repair: true})
	if l.LastOffset() != segs[1].index-1 {
		t.Fatalf("after Repair LastOffset %d, want %d", l.LastOffset(), segs[1].index-1)
	}
	if got, _ := listSegments(dir); len(got) != 1 {
		t.Fatalf("after Repair %d segments remain, want 1", len(got))
	}
}
