package wal

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer is a log sink safe for the writer goroutine and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the logged lines that contain msg.
func (b *lockedBuffer) lines(msg string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for line := range strings.Lines(b.buf.String()) {
		if strings.Contains(line, msg) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestFailureLinesThrottled: a disk that fails every commit and every
// recovery logs one line per second and kind, with the count of the ones
// held back, and the last line logged tells the state the log is in.
func TestFailureLinesThrottled(t *testing.T) {
	const (
		commitFailed   = "group commit failed"
		recoveryFailed = "recovery failed"
		recovered      = "log recovered"
	)
	f := newFaults()
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	logs := &lockedBuffer{}
	l := openLog(t, t.TempDir(), &Options{
		Logger:        slog.New(slog.NewTextHandler(logs, nil)),
		RetryInterval: time.Hour,
		injectFault:   f.inject,
		now:           clock.Now,
	})
	appendFails := func(n int) {
		t.Helper()
		for range n {
			if _, _, err := l.Append(context.Background(), [][]byte{[]byte("x")}); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Append: %v, want ErrUnavailable", err)
			}
		}
	}
	count := func(msg string, want int) []string {
		t.Helper()
		got := logs.lines(msg)
		if len(got) != want {
			t.Fatalf("%d lines %q, want %d:\n%s", len(got), msg, want, strings.Join(got, "\n"))
		}
		return got
	}

	// The disk stays bad: one commit fails, 49 recoveries fail.
	f.set(faultSync, syscall.ENOSPC)
	f.set(faultRecover, syscall.ENOSPC)
	appendFails(50)
	count(commitFailed, 1)
	count(recoveryFailed, 1)
	clock.advance(logEvery)
	appendFails(1)
	if got := count(recoveryFailed, 2); !strings.Contains(got[1], logKeyNotLogged+"=49") {
		t.Fatalf("second line does not count the 49 held back: %s", got[1])
	}

	// The disk takes data again: the recovery is logged.
	f.set(faultRecover, nil)
	f.set(faultSync, nil)
	mustAppend(t, l, []byte("ok"))
	count(recovered, 1)

	// Commits fail and recover in turn: one line of each, the recovery last.
	clock.advance(logEvery)
	f.set(faultSync, syscall.ENOSPC)
	appendFails(20)
	count(commitFailed, 2)
	count(recovered, 2)
	f.set(faultSync, nil)
	mustAppend(t, l, []byte("ok again"))
	count(commitFailed, 2)
	count(recovered, 2)
	all := logs.lines("wal:")
	if last := all[len(all)-1]; !strings.Contains(last, recovered) {
		t.Fatalf("last line %q, want the recovery", last)
	}
}

func TestThrottleAllow(t *testing.T) {
	var th throttle
	t0 := time.Unix(1000, 0)
	for i, tc := range []struct {
		at      time.Duration
		ok      bool
		skipped int
	}{
		{0, true, 0},
		{time.Millisecond, false, 0},
		{logEvery - 1, false, 0},
		{logEvery, true, 2},
		{logEvery + 1, false, 0},
		{5 * logEvery, true, 1},
	} {
		ok, skipped := th.allow(t0.Add(tc.at))
		if ok != tc.ok || skipped != tc.skipped {
			t.Errorf("event %d at %v: allow = %v, %d; want %v, %d", i, tc.at, ok, skipped, tc.ok, tc.skipped)
		}
	}
}
