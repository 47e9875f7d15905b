package wal

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// faults is a switchable injectFault: while a step is set to fail, every
// check of it returns the error.
type faults struct {
	mu    sync.Mutex
	fail  map[fault]error
	calls map[fault]int
}

func newFaults() *faults { return &faults{fail: map[fault]error{}, calls: map[fault]int{}} }

func (f *faults) inject(step fault) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[step]++
	return f.fail[step]
}

func (f *faults) set(step fault, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, step)
	} else {
		f.fail[step] = err
	}
}

func (f *faults) count(step fault) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[step]
}

// checkDurableFiles asserts that the segment files hold exactly what Stats
// says: nothing of a failed commit is left on disk.
func checkDurableFiles(tb testing.TB, l *Log) {
	tb.Helper()
	st := l.Stats()
	segs, err := listSegments(l.dir)
	if err != nil {
		tb.Fatal(err)
	}
	var size int64
	for _, s := range segs {
		fi, err := os.Stat(s.path)
		if err != nil {
			tb.Fatal(err)
		}
		size += fi.Size()
	}
	if len(segs) != st.Segments || size != st.Bytes {
		tb.Fatalf("files: %d segments, %d bytes; Stats: %d segments, %d bytes", len(segs), size, st.Segments, st.Bytes)
	}
}

func TestFailedCommitAcknowledgesNobody(t *testing.T) {
	for _, step := range []fault{faultWrite, faultSync, faultSyncDir} {
		t.Run(step.String(), func(t *testing.T) {
			dir := t.TempDir()
			f := newFaults()
			opts := &Options{SegmentSize: 4 << 10, injectFault: f.inject}
			l := openLog(t, dir, opts)
			want := map[uint64][]byte{}
			for c := range 5 {
				first, _ := mustAppend(t, l, record(5, c, 1), record(5, c, 2))
				want[first], want[first+1] = record(5, c, 1), record(5, c, 2)
			}
			before := l.LastOffset()

			// Several appenders while the step fails; the large record
			// makes every commit create a segment, so faultSyncDir is hit.
			f.set(step, syscall.ENOSPC)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for a := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _, err := l.Append(context.Background(), [][]byte{record(6, a, 3), make([]byte, 5<<10)})
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("Append while %s fails: %v, want ErrUnavailable and ENOSPC", step, err)
				}
			}
			if f.count(step) == 0 {
				t.Fatalf("the %s step was never reached", step)
			}
			if l.LastOffset() != before {
				t.Fatalf("LastOffset moved from %d to %d on failed commits", before, l.LastOffset())
			}
			// Recovery (which is not failing) brought the log back.
			if err := l.Writable(); err != nil {
				t.Fatalf("Writable after recovery: %v", err)
			}
			checkDurableFiles(t, l)
			checkRecords(t, l, want)

			f.set(step, nil)
			first, _ := mustAppend(t, l, []byte("after"), make([]byte, 5<<10))
			if first != before+1 {
				t.Fatalf("first append after the failure got %d, want %d", first, before+1)
			}
			want[first], want[first+1] = []byte("after"), make([]byte, 5<<10)
			checkRecords(t, l, want)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			checkRecords(t, openLog(t, dir, nil), want)
		})
	}
}

func TestUnavailableUntilRecovered(t *testing.T) {
	for _, by := range []string{"append", "timer"} {
		t.Run("recovered-by-"+by, func(t *testing.T) {
			f := newFaults()
			opts := &Options{injectFault: f.inject, RetryInterval: time.Hour}
			if by == "timer" {
				opts.RetryInterval = 5 * time.Millisecond
			}
			dir := t.TempDir()
			l := openLog(t, dir, opts)
			mustAppend(t, l, []byte("one"))

			f.set(faultSync, syscall.EIO)
			f.set(faultRecover, syscall.ENOSPC) // the disk stays bad
			if _, _, err := l.Append(context.Background(), [][]byte{[]byte("lost")}); !errors.Is(err, syscall.EIO) || !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Append on failing sync: %v", err)
			}
			if err := l.Writable(); !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Writable while recovery fails: %v", err)
			}
			writes := f.count(faultWrite)
			if _, _, err := l.Append(context.Background(), [][]byte{[]byte("refused")}); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Append while unavailable: %v", err)
			}
			if f.count(faultWrite) != writes {
				t.Fatal("a commit was written while the log was unavailable")
			}
			if got := l.Read(1, 0, func(uint64, []byte) error { return nil }); got != nil {
				t.Fatalf("Read while unavailable: %v", got)
			}

			f.set(faultSync, nil)
			f.set(faultRecover, nil)
			if by == "timer" {
				poll.Until(t, 10*time.Second, "the log to be writable", func() bool { return l.Writable() == nil })
			}
			first, _ := mustAppend(t, l, []byte("two"))
			if first != 2 {
				t.Fatalf("append after recovery got offset %d, want 2", first)
			}
			if err := l.Writable(); err != nil {
				t.Fatalf("Writable after recovery: %v", err)
			}
			checkRecords(t, l, map[uint64][]byte{1: []byte("one"), 2: []byte("two")})
			l.Close()
			checkRecords(t, openLog(t, dir, nil), map[uint64][]byte{1: []byte("one"), 2: []byte("two")})
		})
	}
}

// TestDiskFull fills a small tmpfs for real: appends fail with ENOSPC and
// acknowledge nothing, and resume by themselves once space is freed.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): run as root with CAP_SYS_ADMIN to test a real full disk", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "wal")
	l := openLog(t, dir, &Options{SegmentSize: 128 << 10, RetryInterval: 5 * time.Millisecond})
	want := map[uint64][]byte{}
	var full error
	for c := 0; c < 1000 && full == nil; c++ {
		recs := [][]byte{record(7, c, 5), make([]byte, 8<<10)}
		first, _, err := l.Append(context.Background(), recs)
		if err != nil {
			full = err
			break
		}
		want[first], want[first+1] = recs[0], recs[1]
	}
	if !errors.Is(full, syscall.ENOSPC) || !errors.Is(full, ErrUnavailable) {
		t.Fatalf("filling the disk ended with %v, want ENOSPC", full)
	}
	if l.LastOffset() != uint64(len(want)) {
		t.Fatalf("LastOffset %d after %d acknowledged records", l.LastOffset(), len(want))
	}
	checkRecords(t, l, want)
	t.Logf("disk full after %d records: %v; Writable: %v", len(want), full, l.Writable())
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var resumed atomic.Bool
	for !resumed.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("appends did not resume after space came back: %v", l.Writable())
		}
		recs := [][]byte{[]byte("space is back"), make([]byte, 8<<10)}
		first, _, err := l.Append(context.Background(), recs)
		switch {
		case err == nil:
			want[first], want[first+1] = recs[0], recs[1]
			resumed.Store(true)
		case errors.Is(err, ErrUnavailable):
			time.Sleep(5 * time.Millisecond)
		default:
			t.Fatalf("Append: %v", err)
		}
	}
	checkRecords(t, l, want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openLog(t, dir, nil)
	checkRecords(t, l2, want)
}

// TestFailedSyncFailsTheCommitWrittenBehindIt: commit k+1 is written while
// commit k is fsynced; when k's fsync fails, k+1 must fail too and be cut.
func TestFailedSyncFailsTheCommitWrittenBehindIt(t *testing.T) {
	dir := t.TempDir()
	var (
		writes  atomic.Int64
		syncs   atomic.Int64
		entered = make(chan struct{})
		release = make(chan struct{})
	)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	const pipeline = 64 << 10
	l := openLog(t, dir, &Options{PipelineBytes: pipeline, noInlineSync: true, injectFault: func(f fault) error {
		switch f {
		case faultWrite:
			writes.Add(1)
		case faultSync:
			if syncs.Add(1) == 2 { // the first sync after the setup append
				close(entered)
				<-release
				return syscall.EIO
			}
		}
		return nil
	}})
	t.Cleanup(releaseOnce)
	mustAppend(t, l, []byte("durable"))

	results := make(chan error, 2)
	go func() {
		_, _, err := l.Append(context.Background(), [][]byte{[]byte("k")})
		results <- err
	}()
	<-entered
	go func() {
		// Large enough to be written during k's fsync.
		_, _, err := l.Append(context.Background(), [][]byte{[]byte("k+1"), make([]byte, pipeline)})
		results <- err
	}()
	poll.Until(t, 10*time.Second, "the condition", func() bool { return writes.Load() == 3 }) // k+1 is in the file
	releaseOnce()
	for range 2 {
		if err := <-results; !errors.Is(err, syscall.EIO) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Append: %v, want EIO", err)
		}
	}
	if l.LastOffset() != 1 {
		t.Fatalf("LastOffset %d, want 1", l.LastOffset())
	}
	checkDurableFiles(t, l)
	if first, _ := mustAppend(t, l, []byte("next")); first != 2 {
		t.Fatalf("next append got %d, want 2", first)
	}
	l.Close()
	checkRecords(t, openLog(t, dir, nil), map[uint64][]byte{1: []byte("durable"), 2: []byte("next")})
}
