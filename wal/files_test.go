package wal

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// appendRemoved requires an Append that fails with ErrRemoved.
func appendRemoved(t *testing.T, l *Log, what string) {
	t.Helper()
	_, _, err := l.Append(context.Background(), [][]byte{[]byte("after " + what)})
	if !errors.Is(err, ErrRemoved) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append after %s: %v, want ErrRemoved and ErrUnavailable", what, err)
	}
}

// TestRemovedDirRefusesAppends: after rm -rf of the log's directory, no
// append is acknowledged (the first one is refused already: its segment has
// no link left after the fsync), the log stays unavailable, and nothing is
// recreated.
func TestRemovedDirRefusesAppends(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		t.Run(map[bool]string{false: "inline", true: "syncer"}[pipelined], func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "wal")
			l := openLog(t, dir, &Options{RetryInterval: 5 * time.Millisecond, noInlineSync: pipelined})
			mustAppend(t, l, []byte("durable"))
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			appendRemoved(t, l, "rm -rf")
			if err := l.Writable(); !errors.Is(err, ErrRemoved) {
				t.Fatalf("Writable: %v, want ErrRemoved", err)
			}
			// Retries (timer and appends) must not bring a new directory.
			time.Sleep(20 * time.Millisecond) // several RetryIntervals: nothing to poll for
			appendRemoved(t, l, "retries")
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the log directory was recreated: %v", err)
			}
			if l.LastOffset() != 1 {
				t.Fatalf("LastOffset %d, want 1", l.LastOffset())
			}
			if err := l.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		})
	}
}

// TestDeletedSegmentFailsTheCommitThatCut: a commit that starts a new
// segment is refused when the segment it began in was deleted.
func TestDeletedSegmentFailsTheCommitThatCut(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, &Options{SegmentSize: 4 << 10})
	mustAppend(t, l, []byte("first"))
	segs, err := listSegments(dir)
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	if err := os.Remove(segs[0].path); err != nil {
		t.Fatal(err)
	}
	_, _, err = l.Append(context.Background(), [][]byte{make([]byte, 5<<10), []byte("in the next segment")})
	if !errors.Is(err, ErrRemoved) {
		t.Fatalf("Append across a cut after the segment was deleted: %v, want ErrRemoved", err)
	}
}

// TestReplacedOrWatchedPathDetected: the periodic check finds a renamed log
// directory and a removed watched file; TruncateFront then frees nothing.
func TestReplacedOrWatchedPathDetected(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir, watched string)
	}{
		{"log dir renamed", func(t *testing.T, dir, _ string) {
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
		}},
		{"log dir replaced", func(t *testing.T, dir, _ string) {
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"watched file removed", func(t *testing.T, _, watched string) {
			if err := os.Remove(watched); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir, watched := filepath.Join(base, "wal"), filepath.Join(base, "index.db")
			if err := os.WriteFile(watched, []byte("index"), 0o600); err != nil {
				t.Fatal(err)
			}
			l := openLog(t, dir, &Options{SegmentSize: 4 << 10, checkEvery: 5 * time.Millisecond})
			if err := l.Watch(watched); err != nil {
				t.Fatal(err)
			}
			for range 4 { // segments TruncateFront could free
				mustAppend(t, l, make([]byte, 5<<10))
			}
			before := l.Stats().Segments
			tc.damage(t, dir, watched)
			poll.Until(t, 10*time.Second, "the log to find the removal", func() bool { return errors.Is(l.Writable(), ErrRemoved) })
			appendRemoved(t, l, tc.name)
			if err := l.TruncateFront(l.LastOffset()); !errors.Is(err, ErrRemoved) {
				t.Fatalf("TruncateFront: %v, want ErrRemoved", err)
			}
			if got := l.Stats().Segments; got != before {
				t.Fatalf("TruncateFront freed segments (%d, was %d) after the removal", got, before)
			}
		})
	}
}

// TestTruncateFrontChecksWatchedPaths: TruncateFront checks the watched
// paths itself before it frees a segment, without waiting for the periodic
// check: records applied to a deleted index must stay in the log.
func TestTruncateFrontChecksWatchedPaths(t *testing.T) {
	base := t.TempDir()
	watched := filepath.Join(base, "index.db")
	if err := os.WriteFile(watched, []byte("index"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, filepath.Join(base, "wal"), &Options{SegmentSize: 4 << 10, checkEvery: time.Hour})
	if err := l.Watch(watched); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		mustAppend(t, l, make([]byte, 5<<10))
	}
	if err := os.Remove(watched); err != nil {
		t.Fatal(err)
	}
	before := l.Stats()
	if err := l.TruncateFront(l.LastOffset()); !errors.Is(err, ErrRemoved) {
		t.Fatalf("TruncateFront: %v, want ErrRemoved", err)
	}
	if after := l.Stats(); after != before {
		t.Fatalf("TruncateFront freed records after the watched file was removed: %+v, was %+v", after, before)
	}
	appendRemoved(t, l, "the watched file was removed")
}
