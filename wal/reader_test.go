package wal

import (
	"runtime"
	"strings"
	"testing"
	"weak"
)

// The reader keeps one segment's buffer, not the buffers of earlier,
// longer segments through stale entries of its reused slice: with records
// that grow (fewer per segment), every segment read used to stay in memory.
func TestDiskReaderKeepsOneSegment(t *testing.T) {
	l := openLog(t, t.TempDir(), &Options{SegmentSize: 4 << 10, CacheRecords: 1})
	for i := range 400 {
		mustAppend(t, l, []byte(strings.Repeat("x", 20+i)))
	}
	if segs := len(l.segs); segs < 20 {
		t.Fatalf("%d segments, want many", segs)
	}
	var loaded []weak.Pointer[byte] // the first byte of each segment buffer read
	seen := map[uint64]bool{}
	for off := uint64(1); off < l.LastOffset(); off++ {
		if err := l.Read(off, 1, func(uint64, []byte) error { return nil }); err != nil {
			t.Fatal(err)
		}
		l.reader.mu.Lock()
		if !seen[l.reader.index] {
			seen[l.reader.index] = true
			loaded = append(loaded, weak.Make(&l.reader.bodies[0][0]))
		}
		l.reader.mu.Unlock()
	}
	runtime.GC()
	alive := 0
	for _, p := range loaded {
		if p.Value() != nil {
			alive++
		}
	}
	if alive > 1 {
		t.Fatalf("%d of %d segment buffers read are still in memory, want the last one only", alive, len(loaded))
	}
}
