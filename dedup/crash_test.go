package dedup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/event"
)

// Crash tests run the consumer in a child process (this test binary in
// helper mode) that kills itself with SIGKILL at a chosen point; the parent
// then reopens the database and checks that nothing was lost or counted
// twice, and that resuming finishes the job exactly.
const (
	crashEnvDir   = "DEDUP_CRASH_DIR"
	crashEnvPoint = "DEDUP_CRASH_POINT"
	crashEnvAt    = "DEDUP_CRASH_AT"

	crashRecords  = 3000
	crashDistinct = 1700
	crashChunk    = 250
)

// genLog is a deterministic log of n records: record i carries key
// genKey(i), so a parent and a child process see the same log.
type genLog struct {
	n     uint64
	first uint64
}

func genKey(i uint64) uint64 {
	z := i * 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	return (z ^ (z >> 27)) % crashDistinct
}

func genEvent(i uint64) event.Event {
	k := genKey(i)
	return ev(fmt.Sprintf("t%d", k%5), fmt.Sprint(k), baseTime.Add(time.Duration(i%97)*time.Second))
}

func (g *genLog) Wait(ctx context.Context, after uint64) error {
	if after < g.n {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (g *genLog) Read(from uint64, limit int, fn func(uint64, []byte) error) error {
	if from < g.first {
		return fmt.Errorf("gen log: read %d below front %d", from, g.first)
	}
	for i := from; i <= g.n && i < from+uint64(limit); i++ {
		e := genEvent(i)
		if err := fn(i, e.AppendBinary(nil)); err != nil {
			return err
		}
	}
	return nil
}

func (g *genLog) LastOffset() uint64 { return g.n }

func (g *genLog) TruncateFront(offset uint64) error {
	g.first = max(g.first, offset)
	return nil
}

func crashOptions(dir, point string, at int) (*Options, *ConsumerOptions) {
	kill := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	commits, applied := 0, 0
	o := &Options{ExpectedKeys: 1 << 16, rebuildBatch: 50, fanout: 3, blockTarget: 100}
	co := &ConsumerOptions{ChunkEntries: crashChunk, ChunkDelay: -1}
	switch point {
	case "before-commit": // everything written into the transaction, commit not begun
		o.failCommit = func() error {
			if commits++; commits == at {
				kill()
			}
			return nil
		}
	case "after-commit": // committed, log not yet truncated
		co.afterApply = func(uint64) error {
			if applied++; applied == at {
				kill()
			}
			return nil
		}
	case "mid-rebuild": // a growing filter half built while chunks are applied
		o.ExpectedKeys = 64
		o.onRebuildStep = func(scanned int, grow bool) error {
			if grow && scanned >= at*50 {
				kill()
			}
			return nil
		}
	}
	return o, co
}

// crashHelper is the child process: it consumes the generated log until its
// crash point kills it. Reaching the end is a failure (exit 3).
func crashHelper() int {
	dir, point := os.Getenv(crashEnvDir), os.Getenv(crashEnvPoint)
	at, _ := strconv.Atoi(os.Getenv(crashEnvAt))
	o, co := crashOptions(dir, point, at)
	s, err := Open(filepath.Join(dir, "index.db"), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 2
	}
	src := &genLog{n: crashRecords, first: 1}
	c, err := NewConsumer(s, src, co)
	if err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		return 2
	}
	c.Start()
	deadline := time.Now().Add(30 * time.Second)
	for s.Checkpoint() < crashRecords && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	_ = c.Close()
	_ = s.Close()
	return 3
}

// expectState checks the store against the generated log up to cp.
func expectState(tb testing.TB, s *Store, cp uint64) {
	tb.Helper()
	first := map[uint64]uint64{} // key -> first offset
	for i := uint64(1); i <= cp; i++ {
		if _, ok := first[genKey(i)]; !ok {
			first[genKey(i)] = i
		}
	}
	st := mustStats(tb, s)
	if st.Checkpoint != cp || st.Unique != uint64(len(first)) || st.Unique+st.Duplicates+st.Malformed != cp {
		tb.Fatalf("at checkpoint %d: %d distinct keys expected, stats %+v", cp, len(first), st)
	}
	got := listAll(tb, s, "", 97)
	if len(got) != len(first) {
		tb.Fatalf("listed %d events, want %d", len(got), len(first))
	}
	for _, e := range got {
		k, err := strconv.ParseUint(e.EventID, 10, 64)
		if err != nil || first[k] != e.Offset {
			tb.Fatalf("stored %s/%s at offset %d, first occurrence is %d", e.Topic, e.EventID, e.Offset, first[k])
		}
	}
}

func TestCrashPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("child processes; skipped in -short")
	}
	cases := []struct {
		point  string
		at     int
		wantCP func(cp uint64) bool
	}{
		{"before-commit", 3, func(cp uint64) bool { return cp == 2*crashChunk }},
		{"after-commit", 3, func(cp uint64) bool { return cp == 3*crashChunk }},
		{"mid-rebuild", 2, func(cp uint64) bool { return cp%crashChunk == 0 && cp < crashRecords }},
	}
	for _, tc := range cases {
		t.Run(tc.point, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvPoint+"="+tc.point, crashEnvAt+"="+strconv.Itoa(tc.at))
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL at %s: %v\n%s", tc.point, err, out)
			}
			s := mustOpenPath(t, filepath.Join(dir, "index.db"), &Options{ExpectedKeys: 64, fanout: 3, blockTarget: 100})
			cp := s.Checkpoint()
			if !tc.wantCP(cp) {
				t.Fatalf("checkpoint after crash at %s = %d", tc.point, cp)
			}
			expectState(t, s, cp)
			// Resume: the consumer starts at cp+1 and finishes exactly.
			src := &genLog{n: crashRecords, first: cp + 1}
			c := mustConsumer(t, s, src, &ConsumerOptions{ChunkEntries: crashChunk})
			c.Start()
			poll.Until(t, 20*time.Second, "the consumer to catch up", func() bool { return s.Checkpoint() == crashRecords })
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			expectState(t, s, crashRecords)
		})
	}
}
