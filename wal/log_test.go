package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil)
	if f, last := l.FirstOffset(), l.LastOffset(); f != 1 || last != 0 {
		t.Fatalf("new log: first %d last %d, want 1 0", f, last)
	}
	want := map[uint64][]byte{}
	for call := range 10 {
		var recs [][]byte
		for i := range call + 1 {
			recs = append(recs, record(0, call, i))
		}
		first, _ := mustAppend(t, l, recs...)
		for i, r := range recs {
			want[first+uint64(i)] = r
		}
	}
	if first, last, err := l.Append(context.Background(), nil); first != 0 || last != 0 || err != nil {
		t.Fatalf("empty Append: %d %d %v", first, last, err)
	}
	if l.LastOffset() != 55 {
		t.Fatalf("LastOffset %d, want 55", l.LastOffset())
	}
	checkRecords(t, l, want)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	l2 := openLog(t, dir, nil)
	if l2.FirstOffset() != 1 || l2.LastOffset() != 55 {
		t.Fatalf("reopened: first %d last %d", l2.FirstOffset(), l2.LastOffset())
	}
	checkRecords(t, l2, want) // from disk: the cache is empty after Open
	first, _ := mustAppend(t, l2, []byte("after reopen"))
	if first != 56 {
		t.Fatalf("first offset after reopen %d, want 56", first)
	}
}

func TestGroupCommitConcurrentAppenders(t *testing.T) {
	for _, tc := range []struct {
		name         string
		appenders    int
		pad          int // bytes added to each record
		pipeline     int
		noInlineSync bool
	}{
		{name: "small-records", appenders: 64},
		{name: "small-records-syncer", appenders: 64, noInlineSync: true},
		// Enough queued bytes that commits are written while the previous
		// one is being fsynced.
		{name: "large-records-pipelined", appenders: 16, pad: 20 << 10, pipeline: 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testGroupCommit(t, tc.appenders, tc.pad, tc.pipeline, tc.noInlineSync)
		})
	}
}

func testGroupCommit(t *testing.T, appenders, pad, pipeline int, noInlineSync bool) {
	const calls = 20
	dir := t.TempDir()
	var commits, committed atomic.Int64
	opts := &Options{
		SegmentSize: 64 << 10, // several segments, so commits cross segment boundaries
		onCommit: func(records, bytes int, _ time.Duration) {
			commits.Add(1)
			committed.Add(int64(records))
		},
		PipelineBytes: pipeline,
		noInlineSync:  noInlineSync,
	}
	l := openLog(t, dir, opts)
	var (
		mu   sync.Mutex
		want = map[uint64][]byte{}
		wg   sync.WaitGroup
		errs = make(chan error, appenders)
	)
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				recs := make([][]byte, 1+(a+c)%7)
				for i := range recs {
					recs[i] = append(record(a, c, i), make([]byte, pad)...)
				}
				first, last, err := l.Append(context.Background(), recs)
				if err != nil {
					errs <- err
					return
				}
				if last-first+1 != uint64(len(recs)) {
					errs <- fmt.Errorf("appender %d call %d: %d records got %d..%d", a, c, len(recs), first, last)
					return
				}
				mu.Lock()
				for i, r := range recs {
					if _, dup := want[first+uint64(i)]; dup {
						errs <- fmt.Errorf("offset %d given twice", first+uint64(i))
					}
					want[first+uint64(i)] = r
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if uint64(len(want)) != l.LastOffset() {
		t.Fatalf("%d records acknowledged, LastOffset %d", len(want), l.LastOffset())
	}
	if committed.Load() != int64(len(want)) {
		t.Fatalf("OnCommit saw %d records, want %d", committed.Load(), len(want))
	}
	if commits.Load() >= int64(appenders*calls) {
		t.Errorf("%d commits for %d calls: no group commit happened", commits.Load(), appenders*calls)
	}
	t.Logf("%d calls, %d records, %d group commits, %d segments", appenders*calls, len(want), commits.Load(), l.Stats().Segments)
	checkRecords(t, l, want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, openLog(t, dir, opts), want)
}

// blockSync returns injectFault that holds every fsync until release is
// closed, signalling entered when the first one starts.
func blockSync(entered chan<- struct{}, release <-chan struct{}) func(fault) error {
	var once sync.Once
	return func(f fault) error {
		if f == faultSync {
			once.Do(func() { close(entered) })
			<-release
		}
		return nil
	}
}

func TestAppendContextEndsBeforeWrite(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var writes atomic.Int64
	block := blockSync(entered, release)
	l := openLog(t, t.TempDir(), &Options{injectFault: func(f fault) error {
		if f == faultWrite {
			writes.Add(1)
		}
		return block(f)
	}})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.Append(ctx, [][]byte{[]byte("x")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a canceled context: %v", err)
	}

	// A is being fsynced and B, small, waits in the queue for the commit
	// after it, until its context ends.
	results := make(chan error, 1)
	go func() {
		_, _, err := l.Append(context.Background(), [][]byte{[]byte("a")})
		results <- err
	}()
	<-entered
	bctx, bcancel := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() {
		_, _, err := l.Append(bctx, [][]byte{[]byte("b1"), []byte("b2")})
		bDone <- err
	}()
	poll.Until(t, 10*time.Second, "the condition", func() bool { return l.outstanding.Load() == 2 })
	bcancel()
	if err := <-bDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("B: %v, want context.Canceled", err)
	}
	releaseOnce()
	if err := <-results; err != nil {
		t.Fatalf("A: %v", err)
	}
	first, _ := mustAppend(t, l, []byte("c"))
	if first != 2 {
		t.Fatalf("C got offset %d, want 2: B was written", first)
	}
	checkRecords(t, l, map[uint64][]byte{1: []byte("a"), 2: []byte("c")})
	if n := writes.Load(); n != 2 {
		t.Fatalf("%d commits written, want 2", n)
	}
}

func TestSegmentsRollAndReopen(t *testing.T) {
	dir := t.TempDir()
	opts := &Options{SegmentSize: 1 << 10}
	l := openLog(t, dir, opts)
	want := map[uint64][]byte{}
	for c := range 60 {
		recs := [][]byte{record(1, c, 10), record(1, c, 39)}
		if c%10 == 0 {
			recs = append(recs, make([]byte, 3000)) // larger than a segment
		}
		first, _ := mustAppend(t, l, recs...)
		for i, r := range recs {
			want[first+uint64(i)] = r
		}
	}
	st := l.Stats()
	if st.Segments < 10 {
		t.Fatalf("%d segments, want many", st.Segments)
	}
	files, _ := listSegments(dir)
	if len(files) != st.Segments {
		t.Fatalf("Stats says %d segments, directory has %d", st.Segments, len(files))
	}
	var size int64
	for _, f := range files {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	if size != st.Bytes {
		t.Fatalf("Stats says %d bytes, files hold %d", st.Bytes, size)
	}
	checkRecords(t, l, want)
	l.Close()
	checkRecords(t, openLog(t, dir, opts), want)
}

func TestReadRanges(t *testing.T) {
	l := openLog(t, t.TempDir(), &Options{SegmentSize: 512, CacheRecords: 8})
	for c := range 50 {
		mustAppend(t, l, record(2, c, 0))
	}
	// From the cache (last 8) and from disk.
	for _, from := range []uint64{1, 20, 43, 50} {
		var got []uint64
		err := l.Read(from, 5, func(off uint64, data []byte) error {
			if string(data) != string(record(2, int(off-1), 0)) {
				return fmt.Errorf("record %d = %q", off, data)
			}
			got = append(got, off)
			return nil
		})
		if err != nil {
			t.Fatalf("Read(%d): %v", from, err)
		}
		n := min(5, int(51-from))
		if len(got) != n || got[0] != from || got[n-1] != from+uint64(n)-1 {
			t.Fatalf("Read(%d, 5) gave %v", from, got)
		}
	}
	if err := l.Read(51, 5, func(uint64, []byte) error { return errors.New("called") }); err != nil {
		t.Fatalf("Read at LastOffset+1: %v", err)
	}
	if err := l.Read(52, 5, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read past the end: %v", err)
	}
	if err := l.Read(0, 5, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read(0): %v", err)
	}
	stop := errors.New("stop")
	calls := 0
	if err := l.Read(1, 0, func(uint64, []byte) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("fn error: got %v after %d calls", err, calls)
	}
}

func TestWait(t *testing.T) {
	l := openLog(t, t.TempDir(), nil)
	mustAppend(t, l, []byte("one"))
	if err := l.Wait(context.Background(), 0); err != nil {
		t.Fatalf("Wait(0) with a record: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with nothing new: %v", err)
	}
	woke := make(chan error, 1)
	go func() { woke <- l.Wait(context.Background(), 1) }()
	mustAppend(t, l, []byte("two"))
	if err := <-woke; err != nil {
		t.Fatalf("Wait woken by append: %v", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- l.Wait(context.Background(), 2) }()
	l.Close()
	if err := <-closed; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait across Close: %v", err)
	}
}

func TestCloseWaitsForQueuedAppends(t *testing.T) {
	dir := t.TempDir()
	entered, release := make(chan struct{}), make(chan struct{})
	l := openLog(t, dir, &Options{injectFault: blockSync(entered, release)})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the Close of openLog, should the test fail
	const n = 8
	results := make(chan error, n)
	go func() {
		_, _, err := l.Append(context.Background(), [][]byte{[]byte("first")})
		results <- err
	}()
	<-entered
	for i := range n - 1 {
		go func() {
			_, _, err := l.Append(context.Background(), [][]byte{fmt.Appendf(nil, "queued %d", i)})
			results <- err
		}()
	}
	// Let the queued appends reach the log before Close.
	poll.Until(t, 10*time.Second, "the condition", func() bool { return l.outstanding.Load() == n })
	closeDone := make(chan error, 1)
	go func() { closeDone <- l.Close() }()
	releaseOnce()
	if err := <-closeDone; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range n {
		if err := <-results; err != nil {
			t.Fatalf("queued Append: %v", err)
		}
	}
	if _, _, err := l.Append(context.Background(), [][]byte{[]byte("late")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := l.Writable(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Writable after Close: %v", err)
	}
	if err := l.Read(1, 1, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if err := l.TruncateFront(2); !errors.Is(err, ErrClosed) {
		t.Fatalf("TruncateFront after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	l2 := openLog(t, dir, nil)
	if l2.LastOffset() != n {
		t.Fatalf("after reopen LastOffset %d, want %d", l2.LastOffset(), n)
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	openLog(t, dir, nil)
	if _, err := Open(dir, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestOpenRefusesTidwallTempFiles(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil)
	mustAppend(t, l, []byte("x"))
	l.Close()
	if err := os.WriteFile(filepath.Join(dir, segmentName(1)+".START"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil); err == nil {
		t.Fatal("Open accepted a directory with a .START file")
	}
}

// TestSegments lists segment files in offset order (the tail last) among
// other files, and refuses a directory with one of tidwall/wal's temporary
// files.
func TestSegments(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"LOCK", ".probe", "00000000000000000001", "00000000000000009999", "00000000000000010000", "0000000000000000001x"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "00000000000000020000"), 0o700); err != nil { // a directory is no segment
		t.Fatal(err)
	}
	segs, err := Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, s := range segs {
		got = append(got, s.FirstOffset)
		if filepath.Dir(s.Path) != dir {
			t.Errorf("path %s not in %s", s.Path, dir)
		}
	}
	if fmt.Sprint(got) != "[1 9999 10000]" {
		t.Fatalf("segments %v, want [1 9999 10000]", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000500.START"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Segments(dir); err == nil {
		t.Fatal("a directory with a tidwall/wal temporary file: no error")
	}
}
