package wal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCreateStartsAtOffset(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	if err := Create(dir, 1001); err != nil {
		t.Fatal(err)
	}
	if err := Create(dir, 5); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Create over a log: %v, want ErrNotEmpty", err)
	}
	if err := Create(t.TempDir(), 0); err == nil {
		t.Fatal("Create at offset 0 succeeded")
	}
	l := openLog(t, dir, nil)
	if l.FirstOffset() != 1001 || l.LastOffset() != 1000 {
		t.Fatalf("new log: %d..%d, want 1001..1000", l.FirstOffset(), l.LastOffset())
	}
	if err := l.Read(1001, 0, func(uint64, []byte) error { return errors.New("a record") }); err != nil {
		t.Fatalf("Read of the empty log: %v", err)
	}
	first, last := mustAppend(t, l, []byte("a"), []byte("b"))
	if first != 1001 || last != 1002 {
		t.Fatalf("first append got %d..%d, want 1001..1002", first, last)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, nil)
	checkRecords(t, l, map[uint64][]byte{1001: []byte("a"), 1002: []byte("b")})
	rep, err := Check(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Check while open: %v (%+v), want ErrLocked", err, rep)
	}
}

func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	lock, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open beside LockDir: %v, want ErrLocked", err)
	}
	if _, err := LockDir(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("LockDir twice: %v, want ErrLocked", err)
	}
	lock.Close()
	l := openLog(t, dir, nil)
	if _, err := LockDir(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("LockDir beside an open log: %v, want ErrLocked", err)
	}
	l.Close()
	if _, err := LockDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("LockDir of a missing directory succeeded")
	}
}

// TestCheckReportsWhatOpenWouldDo runs Check on every way of breaking a log
// that TestOpenBrokenLog knows: damage that Open refuses is reported as
// damage at the same segment and offset, a torn tail that Open cuts as a torn
// tail, and Check changes nothing.
func TestCheckReportsWhatOpenWouldDo(t *testing.T) {
	lay, _ := buildTemplate(t)
	rep, err := Check(lay.dir)
	if err != nil || !rep.Clean() || rep.TornTail != nil || rep.FirstOffset != 1 || rep.LastOffset != lay.last || rep.Segments != 2 {
		t.Fatalf("clean log: %+v, %v", rep, err)
	}
	for _, tc := range breakCases(lay) {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, lay.dir)
			tc.apply(t, dir, lay)
			sizes := segmentSizes(t, dir)
			rep, err := Check(dir)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.refused:
				if rep.Clean() || rep.Damage[0].Segment != tc.segment || rep.Damage[0].Offset != tc.last+1 {
					t.Fatalf("damage %v, want segment %s offset %d", rep.Damage, tc.segment, tc.last+1)
				}
			case tc.cut:
				if !rep.Clean() || rep.TornTail == nil || rep.TornTail.Offset != tc.last+1 || rep.LastOffset != tc.last {
					t.Fatalf("report %+v (torn tail %v), want a torn tail at %d", rep, rep.TornTail, tc.last+1)
				}
			default:
				if !rep.Clean() || rep.TornTail != nil || rep.LastOffset != tc.last {
					t.Fatalf("report %+v, want clean up to %d", rep, tc.last)
				}
			}
			if got := segmentSizes(t, dir); len(got) != len(sizes) || got[0] != sizes[0] || got[len(got)-1] != sizes[len(sizes)-1] {
				t.Fatalf("Check changed the files: %v -> %v", sizes, got)
			}
		})
	}
}

func segmentSizes(tb testing.TB, dir string) []int64 {
	tb.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]int64, len(segs))
	for i, s := range segs {
		fi, err := os.Stat(s.path)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = fi.Size()
	}
	return out
}

func TestCheckReportsSegmentGap(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, &Options{SegmentSize: 200})
	for c := range 30 {
		mustAppend(t, l, record(4, c, 20))
	}
	l.Close()
	segs, _ := listSegments(dir)
	if err := os.Remove(segs[1].path); err != nil {
		t.Fatal(err)
	}
	rep, err := Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clean() || rep.Damage[0].Pos != -1 || rep.Damage[0].Offset != segs[1].index || rep.Damage[0].Segment != filepath.Base(segs[2].path) {
		t.Fatalf("gap: %+v %v", rep, rep.Damage)
	}
	if _, err := Check(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("Check of a missing directory succeeded")
	}
}

// TestArchiveKeepsAppliedSegments checks Options.RetainBytes and RetainAge:
// applied segments stay until the log passes the byte bound or the segment
// the age bound, and Stats.Archived counts them.
func TestArchiveKeepsAppliedSegments(t *testing.T) {
	const segSize = 1 << 10
	body := make([]byte, 200)
	fill := func(l *Log, segments int) {
		for l.Stats().Segments < segments {
			mustAppend(t, l, body)
		}
	}
	t.Run("unbounded", func(t *testing.T) {
		l := openLog(t, t.TempDir(), &Options{SegmentSize: segSize, RetainBytes: -1})
		fill(l, 6)
		if err := l.TruncateFront(l.LastOffset() + 1); err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		if st.FirstOffset != 1 || st.Segments != 6 || st.Archived == 0 || st.Archived > st.Bytes {
			t.Fatalf("unbounded archive: %+v", st)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		l := openLog(t, t.TempDir(), &Options{SegmentSize: segSize, RetainBytes: 3 * segSize})
		fill(l, 8)
		if err := l.TruncateFront(l.LastOffset() + 1); err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		if st.FirstOffset == 1 || st.Bytes > 3*segSize || st.Segments < 3 {
			t.Fatalf("archive of 3 segments' bytes: %+v", st)
		}
		// Unapplied records are never freed, whatever the bound.
		fill(l, 12)
		if err := l.TruncateFront(st.LastOffset + 1); err != nil {
			t.Fatal(err)
		}
		if got := l.FirstOffset(); got > st.LastOffset+1 {
			t.Fatalf("first offset %d passed the applied %d", got, st.LastOffset)
		}
	})
	t.Run("age", func(t *testing.T) {
		now := time.Now()
		dir := t.TempDir()
		l := openLog(t, dir, &Options{SegmentSize: segSize, RetainAge: time.Hour, now: func() time.Time { return now }})
		fill(l, 5)
		if err := l.TruncateFront(l.LastOffset() + 1); err != nil {
			t.Fatal(err)
		}
		if st := l.Stats(); st.FirstOffset != 1 || st.Segments != 5 {
			t.Fatalf("young segments freed: %+v", st)
		}
		// The two oldest segments were last written two hours ago.
		segs, _ := listSegments(dir)
		for _, s := range segs[:2] {
			if err := os.Chtimes(s.path, now.Add(-2*time.Hour), now.Add(-2*time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.TruncateFront(l.LastOffset() + 1); err != nil {
			t.Fatal(err)
		}
		if st := l.Stats(); st.FirstOffset != segs[2].index || st.Segments != 3 {
			t.Fatalf("after aging two segments: %+v, want first %d", st, segs[2].index)
		}
	})
}
