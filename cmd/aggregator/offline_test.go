package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/wal"
	bolt "go.etcd.io/bbolt"
)

// fillDataDir runs a server on a new data directory with mutate, publishes
// rounds of events (with duplicates) and stops it; it returns the
// directory, the last stats and the feed.
func fillDataDir(tb testing.TB, rounds int, mutate func(*Config)) (string, api.StatsReply, []storedEvent) {
	tb.Helper()
	dir := tb.TempDir()
	ts := startServer(tb, dir, func(c *Config) {
		c.SegmentSize = 16 << 10
		if mutate != nil {
			mutate(c)
		}
	})
	for i := range rounds {
		ts.publish(append(events("a", i*50, 50, 100), events("b", i*5, 5, 100)...))
		ts.publish(events("a", i*50, 3, 100))
	}
	st := ts.drain(10 * time.Second)
	feed := ts.feedAll("")
	ts.stop(tb)
	return dir, st, feed
}

// copyDataDir copies a stopped data directory.
func copyDataDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := filepath.Join(tb.TempDir(), "copy")
	err := filepath.Walk(src, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return dst
}

func TestCheckCommand(t *testing.T) {
	dir, _, _ := fillDataDir(t, 10, func(c *Config) { c.Lifecycle.WALRetainBytes = -1 })
	code, out, errs := runCmd(t, "check", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "no damage found") || !strings.Contains(out, "offsets 1 to 580") {
		t.Fatalf("clean: %d %s %s", code, out, errs)
	}
	segs, err := wal.Segments(filepath.Join(dir, "wal"))
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments %v %v", segs, err)
	}
	cases := []struct {
		name   string
		damage func(dir string)
		code   int
		report string
	}{
		{"flipped byte in a segment", func(d string) {
			flipByte(t, filepath.Join(d, "wal", filepath.Base(segs[0].Path)), 100)
		}, 1, "wal/" + filepath.Base(segs[0].Path) + " byte"},
		{"segment missing", func(d string) {
			mustRemove(t, filepath.Join(d, "wal", filepath.Base(segs[1].Path)))
		}, 1, "segment does not end where the next one begins"},
		{"torn tail", func(d string) {
			// A write that did not complete: never acknowledged, nor applied.
			last := filepath.Join(d, "wal", filepath.Base(segs[len(segs)-1].Path))
			f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = f.Write([]byte{0x40, 1, 1, 0xff, 0xff})
			f.Close()
		}, 0, "torn tail"},
		{"index cut short", func(d string) {
			if err := os.Truncate(filepath.Join(d, "index.db"), 3<<12); err != nil {
				t.Fatal(err)
			}
		}, 1, "index.db file: "},
		{"counters", func(d string) {
			editBolt(t, filepath.Join(d, "index.db"), func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("duplicates"), []byte{0, 0, 0, 0, 0, 0, 0, 1})
			})
		}, 1, "counters do not add up"},
		{"log behind the checkpoint", func(d string) {
			for _, s := range segs {
				mustRemove(t, filepath.Join(d, "wal", filepath.Base(s.Path)))
			}
		}, 1, "is ahead of the log's last offset 0"},
		{"index missing, log from 1", func(d string) { mustRemove(t, filepath.Join(d, "index.db")) }, 0, "a start rebuilds it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := copyDataDir(t, dir)
			tc.damage(d)
			code, out, errs := runCmd(t, "check", "--data-dir", d)
			if code != tc.code || !strings.Contains(out, tc.report) {
				t.Fatalf("check: %d\n%s%s\nwant %d with %q", code, out, errs, tc.code, tc.report)
			}
		})
	}
	// The index's checkpoint behind the log's first offset: an old copy of
	// index.db beside a log truncated past it.
	t.Run("index older than the log", func(t *testing.T) {
		d, _, _ := fillDataDir(t, 2, nil)
		old, _ := os.ReadFile(filepath.Join(d, "index.db"))
		ts := startServer(t, d, func(c *Config) { c.SegmentSize = 16 << 10 })
		for i := range 20 {
			ts.publish(events("c", i*50, 50, 100))
		}
		ts.drain(10 * time.Second)
		ts.stop(t)
		if err := os.WriteFile(filepath.Join(d, "index.db"), old, 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, _ := runCmd(t, "check", "--data-dir", d); code != 1 || !strings.Contains(out, "are in neither") {
			t.Fatalf("check: %d %s", code, out)
		}
	})
	t.Run("in use", func(t *testing.T) {
		d := copyDataDir(t, dir)
		startServer(t, d, nil)
		if code, _, errs := runCmd(t, "check", "--data-dir", d); code != exitUsage || !strings.Contains(errs, "in use") {
			t.Fatalf("check of a running data directory: %d %s", code, errs)
		}
	})
	if code, _, _ := runCmd(t, "check", "--data-dir", filepath.Join(dir, "nope")); code != exitUsage {
		t.Fatalf("check of a missing directory: %d", code)
	}
}

func flipByte(tb testing.TB, path string, at int) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	b[at] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
}

func mustRemove(tb testing.TB, path string) {
	tb.Helper()
	if err := os.Remove(path); err != nil {
		tb.Fatal(err)
	}
}

func editBolt(tb testing.TB, path string, edit func(*bolt.Tx) error) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(edit); err != nil {
		tb.Fatal(err)
	}
}

// sameService starts a server on dir and requires the stats and the feed
// given (the lifetime counters; uptime and the log's size aside).
func sameService(tb testing.TB, dir string, st api.StatsReply, feed []storedEvent, mutate func(*Config)) *testServer {
	tb.Helper()
	ts := startServer(tb, dir, mutate)
	got := ts.stats()
	counters := func(s api.StatsReply) string {
		return fmt.Sprint(s.Received, s.UniqueProcessed, s.DuplicateDropped, s.Expired, s.Stored, s.FirstSeq, s.LastSeq,
			s.TopicCounts, s.WAL.Checkpoint, s.Dedup.Keys)
	}
	if counters(got) != counters(st) {
		tb.Fatalf("counters %s, want %s", counters(got), counters(st))
	}
	gotFeed := ts.feedAll("")
	if len(gotFeed) != len(feed) {
		tb.Fatalf("%d events, want %d", len(gotFeed), len(feed))
	}
	for i := range feed {
		if fmt.Sprint(gotFeed[i]) != fmt.Sprint(feed[i]) {
			tb.Fatalf("event %d: %+v, want %+v", i, gotFeed[i], feed[i])
		}
	}
	return ts
}

func TestCompactCommand(t *testing.T) {
	retain := func(c *Config) { c.Lifecycle.RetainEvents = 20 }
	dir, st, feed := fillDataDir(t, 30, retain)
	held := copyDataDir(t, dir)
	startServer(t, held, retain)
	if code, _, errs := runCmd(t, "compact", "--data-dir", held); code != exitUsage || !strings.Contains(errs, "in use") {
		t.Fatalf("compact of a running data directory: %d %s", code, errs)
	}
	path := filepath.Join(dir, "index.db")
	before, freeBefore, sizeBefore := usedBytes(t, path)
	code, out, errs := runCmd(t, "compact", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("compact: %d %s %s", code, out, errs)
	}
	after, freeAfter, sizeAfter := usedBytes(t, path)
	// The running index grew its file ahead of use (the mmap's initial
	// size); the compacted copy is only as large as its pages, and has no
	// more free pages than before. (How many pages expiry freed varies
	// with how the merges fell, and freed pages may have been reused, so
	// neither the free count nor the high-water mark must drop.)
	if sizeAfter >= sizeBefore || freeAfter > freeBefore {
		t.Fatalf("compacted: %d -> %d free pages, file %d -> %d bytes", freeBefore, freeAfter, sizeBefore, sizeAfter)
	}
	t.Logf("%s; pages up to the high-water mark: %d -> %d bytes", out, before, after)
	if ents, _ := filepath.Glob(filepath.Join(dir, "index.db.*")); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	sameService(t, dir, st, feed, retain)
}

func TestRebuildIndexCommand(t *testing.T) {
	archive := func(c *Config) { c.Lifecycle.WALRetainBytes = -1; c.SegmentSize = 16 << 10 }
	dir, st, feed := fillDataDir(t, 10, archive)
	// A named cursor and a topic's retention, to be carried over.
	ts := startServer(t, dir, archive)
	ts.do("PUT", "/consumers/nightly", "application/json", []byte(`{"topic":"a"}`))
	ts.do("POST", "/consumers/nightly/ack", "application/json", []byte(`{"seq":30}`))
	ts.do("PUT", "/topics/zzz/retention", "application/json", []byte(`{"events":7}`))
	ts.stop(t)
	mustRemove(t, filepath.Join(dir, "index.db"))
	// (Starting a server would rebuild it as well; the command does it
	// offline, and for a damaged index.db, which a start refuses.)
	d2 := copyDataDir(t, dir)
	if err := os.WriteFile(filepath.Join(d2, "index.db"), []byte("not an index at all, damaged beyond repair"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, d2} {
		code, out, errs := runCmd(t, "rebuild-index", "--data-dir", d)
		if code != 0 || !strings.Contains(out, "rebuilt") {
			t.Fatalf("rebuild-index: %d %s %s", code, out, errs)
		}
		if d == d2 && !strings.Contains(out, "the old index is kept as") {
			t.Fatalf("rebuild-index did not keep the damaged index: %s", out)
		}
		sameService(t, d, st, feed, archive).stop(t)
	}
	// The settings of a readable old index are carried over.
	ts = startServer(t, dir, archive)
	ts.do("PUT", "/consumers/nightly", "application/json", []byte(`{"topic":"a"}`))
	ts.do("POST", "/consumers/nightly/ack", "application/json", []byte(`{"seq":30}`))
	ts.do("PUT", "/topics/zzz/retention", "application/json", []byte(`{"events":7}`))
	ts.stop(t)
	if code, out, errs := runCmd(t, "rebuild-index", "--data-dir", dir); code != 0 || !strings.Contains(out, "1 named cursors, 1 topic retention") {
		t.Fatalf("rebuild-index over a readable index: %d %s %s", code, out, errs)
	}
	ts = sameService(t, dir, st, feed, archive)
	if status, reply := ts.do("GET", "/consumers/nightly", "", nil); status != 200 || !strings.Contains(string(reply), `"acked":30`) {
		t.Fatalf("cursor after the rebuild: %d %s", status, reply)
	}
	if status, reply := ts.do("GET", "/topics/zzz/retention", "", nil); status != 200 || !strings.Contains(string(reply), `"events":7`) {
		t.Fatalf("retention after the rebuild: %d %s", status, reply)
	}
	ts.stop(t)

	// Without the archive the log no longer starts at 1: refused, with the
	// reason, and nothing changed.
	short, _, _ := fillDataDir(t, 10, nil)
	idx, _ := os.ReadFile(filepath.Join(short, "index.db"))
	code, _, errs := runCmd(t, "rebuild-index", "--data-dir", short)
	if code != exitFailed || !strings.Contains(errs, "the log starts at offset") {
		t.Fatalf("rebuild-index of a truncated log: %d %s", code, errs)
	}
	if now, _ := os.ReadFile(filepath.Join(short, "index.db")); string(now) != string(idx) {
		t.Fatal("a refused rebuild changed index.db")
	}
}

// usedBytes returns the bytes of the pages of a bbolt file up to its
// high-water mark (what bbolt keeps however many of them are free).
func usedBytes(tb testing.TB, path string) (highWater int64, freePages int, fileSize int64) {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil) // read-write: a read-only open loads no freelist
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error { highWater = tx.Size(); return nil })
	return highWater, db.Stats().FreePageN, fi.Size()
}
