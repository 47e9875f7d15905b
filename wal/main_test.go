package wal

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openLog opens a log in dir and closes it at the end of the test.
func openLog(tb testing.TB, dir string, opts *Options) *Log {
	tb.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// record returns a distinct body for offset-independent identification.
func record(caller, call, i int) []byte {
	return fmt.Appendf(nil, "rec-%d-%d-%d-%s", caller, call, i, bytes.Repeat([]byte{byte('a' + i%26)}, i%40))
}

// mustAppend appends records and checks the offsets it gets back.
func mustAppend(tb testing.TB, l *Log, recs ...[]byte) (uint64, uint64) {
	tb.Helper()
	first, last, err := l.Append(context.Background(), recs)
	if err != nil {
		tb.Fatalf("Append: %v", err)
	}
	if last-first+1 != uint64(len(recs)) {
		tb.Fatalf("Append of %d records got offsets %d..%d", len(recs), first, last)
	}
	return first, last
}

// readAll reads every record of the log.
func readAll(tb testing.TB, l *Log) map[uint64][]byte {
	tb.Helper()
	got := map[uint64][]byte{}
	next := l.FirstOffset()
	err := l.Read(next, 0, func(off uint64, data []byte) error {
		if off != next {
			return fmt.Errorf("read offset %d, want %d", off, next)
		}
		next++
		got[off] = data
		return nil
	})
	if err != nil {
		tb.Fatalf("Read: %v", err)
	}
	if next != l.LastOffset()+1 {
		tb.Fatalf("Read stopped at %d, LastOffset is %d", next, l.LastOffset())
	}
	return got
}

// checkRecords asserts that the log holds exactly want.
func checkRecords(tb testing.TB, l *Log, want map[uint64][]byte) {
	tb.Helper()
	got := readAll(tb, l)
	if len(got) != len(want) {
		tb.Fatalf("log holds %d records (%d..%d), want %d", len(got), l.FirstOffset(), l.LastOffset(), len(want))
	}
	for off, w := range want {
		if !bytes.Equal(got[off], w) {
			tb.Fatalf("record %d = %q, want %q", off, got[off], w)
		}
	}
}
