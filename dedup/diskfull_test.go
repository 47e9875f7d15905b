//go:build linux

package dedup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/event"
)

// TestRealDiskFull runs the consumer on a 8 MiB tmpfs filled up by another
// file: commits fail with ENOSPC, nothing moves, and once the file is removed
// the consumer catches up by itself. It needs permission to mount (root).
func TestRealDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs; skipped in -short")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v): disk-full covered by TestConsumerRetriesFailedCommitWithBackoff only", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	s, err := Open(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Take every free byte.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	_ = f.Close()

	log := newFakeLog()
	var evs []event.Event
	for i := range 3000 {
		evs = append(evs, ev(fmt.Sprintf("t%d", i%4), fmt.Sprint(i%2500), baseTime.Add(time.Duration(i)*time.Second)))
	}
	last := log.appendEvents(evs...)
	c := mustConsumer(t, s, log, &ConsumerOptions{ChunkEntries: 500, RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond})
	c.Start()
	defer c.Close()
	poll.Until(t, 20*time.Second, "a failed commit", func() bool { return errors.Is(c.Err(), syscall.ENOSPC) })
	if cp := s.Checkpoint(); cp == last {
		t.Fatalf("everything applied on a full disk")
	}
	before := mustStats(t, s)
	if before.Unique+before.Duplicates != before.Checkpoint {
		t.Fatalf("inconsistent while full: %+v", before)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "recovery after space is back", func() bool { return s.Checkpoint() == last })
	if st := mustStats(t, s); st.Unique != 2500 || st.Duplicates != 500 {
		t.Fatalf("after recovery: %+v", st)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if st := mustStats(t, s2); st.Unique != 2500 || st.Checkpoint != last {
		t.Fatalf("after reopen: %+v", st)
	}
}
