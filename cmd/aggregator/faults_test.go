package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/internal/poll"
)

// TestDiskFullAnswers503AndRecovers runs the server on a small tmpfs that it
// fills for real: publishing answers 503 with Retry-After and acknowledges
// nothing, /readyz says not ready, reads keep working, and once space is
// freed writes resume by themselves.
func TestDiskFullAnswers503AndRecovers(t *testing.T) {
	mnt := mountTmpfs(t, "8m")
	ts := startServerWith(t, filepath.Join(mnt, "data"), func(c *Config) {
		c.ReadTimeout = 10 * time.Second
		c.SegmentSize = 1 << 20
	})
	ts.waitReady(30 * time.Second)
	ts.publish(makeEvent(1, "disk"))
	ts.drain(10 * time.Second)

	fillDisk(t, filepath.Join(mnt, "filler-1"))
	// Large enough to need pages the full disk does not have.
	status, retry, reply := publishBig(t, ts, 2, 256<<10)
	if status != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("publish on a full disk: %d (Retry-After %q), want 503 with Retry-After", status, retry)
	}
	// The reason is named, the files of the data directory are not (the
	// whole error is in the server's log).
	if !strings.Contains(reply, "no space left on device") || strings.Contains(reply, mnt) {
		t.Fatalf("publish on a full disk: body %s: want the reason without a server path", reply)
	}
	// The failed write was cut back, and the recovery's small probe may
	// have found that room: take it too, so that the next commit fails and
	// its recovery finds no room at all.
	fillDisk(t, filepath.Join(mnt, "filler-2"))
	if status, _ := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(3, "disk"))); status != http.StatusServiceUnavailable {
		t.Fatalf("second publish on a full disk: %d", status)
	}
	if status, body := ts.do(http.MethodGet, "/readyz", "", nil); status != http.StatusServiceUnavailable ||
		!strings.Contains(string(body), "no space") || strings.Contains(string(body), mnt) {
		t.Fatalf("readyz on a full disk: %d %s: want 503 naming the reason, not a path", status, body)
	}
	if !strings.Contains(ts.logs.String(), mnt) {
		t.Fatalf("the server's log does not have the full error with its path:\n%s", ts.logs.String())
	}
	if status, _ := ts.do(http.MethodGet, "/events", "", nil); status != http.StatusOK {
		t.Fatalf("reads on a full disk: %d", status)
	}

	for _, f := range []string{"filler-1", "filler-2"} {
		if err := os.Remove(filepath.Join(mnt, f)); err != nil {
			t.Fatal(err)
		}
	}
	ts.waitReady(10 * time.Second)
	ts.publish(makeEvent(4, "disk"))
	st := ts.drain(10 * time.Second)
	ids := listedIDs(ts, "disk")
	if !ids["id-1"] || !ids["id-4"] || ids["id-3"] {
		t.Fatalf("listed %v: want id-1 and id-4, never id-3 (refused)", ids)
	}
	// id-2's write may have reached the file before its fsync failed, but
	// it was never acknowledged; the recovery cuts the log back to the last
	// acknowledged record, so it must not be delivered either.
	if ids["id-2"] || st.Received != 2 {
		t.Fatalf("an unacknowledged event was delivered: ids %v, stats %+v", ids, st)
	}
}

// TestDiskNearlyFullTakesWhatFits leaves 64 KiB free: a 256 KiB request is
// refused and cut back, and the recovery's test write (one page, not the
// size of the failed commit) finds the disk writable again, so a small
// request is acknowledged at once and /readyz is ready.
func TestDiskNearlyFullTakesWhatFits(t *testing.T) {
	mnt := mountTmpfs(t, "8m")
	ts := startServer(t, filepath.Join(mnt, "data"), func(c *Config) { c.SegmentSize = 1 << 20 })
	ts.publish(makeEvent(1, "near"))
	ts.drain(10 * time.Second)

	filler := filepath.Join(mnt, "filler")
	fillDisk(t, filler)
	fi, err := os.Stat(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filler, fi.Size()-64<<10); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := publishBig(t, ts, 2, 256<<10); status != http.StatusServiceUnavailable {
		t.Fatalf("256 KiB publish with 64 KiB free: %d, want 503", status)
	}
	if status, body := ts.do(http.MethodGet, "/readyz", "", nil); status != http.StatusOK {
		t.Fatalf("readyz after the refused large request, with room for small ones: %d %s", status, body)
	}
	ts.publish(makeEvent(3, "near"))
	st := ts.drain(10 * time.Second)
	if ids := listedIDs(ts, "near"); len(ids) != 2 || !ids["id-1"] || !ids["id-3"] || st.Received != 2 {
		t.Fatalf("listed %v, stats %+v: want id-1 and id-3 only", ids, st)
	}
}

// TestDiskFullLogsOncePerSecond sends 40 publishes to a full disk: each is
// refused, and the log's failure lines come at most once a second per kind,
// the next one counting those held back.
func TestDiskFullLogsOncePerSecond(t *testing.T) {
	mnt := mountTmpfs(t, "8m")
	ts := startServer(t, filepath.Join(mnt, "data"), nil)
	ts.publish(makeEvent(1, "quiet"))
	ts.drain(10 * time.Second)
	fillDisk(t, filepath.Join(mnt, "filler-1"))
	// Small events still fit in the tail segment's last page: publish
	// until the first refusal, then take the room its cut back freed.
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("1000 events acknowledged on a full disk")
		}
		status, _ := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(1000+i, "quiet")))
		if status == http.StatusServiceUnavailable {
			break
		}
	}
	fillDisk(t, filepath.Join(mnt, "filler-2"))

	start := time.Now()
	const refusals = 40
	for i := range refusals {
		if status, _ := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(2+i, "quiet"))); status != http.StatusServiceUnavailable {
			t.Fatalf("publish %d on a full disk: %d, want 503", i, status)
		}
	}
	seconds := int(time.Since(start)/time.Second) + 1
	for _, kind := range []string{"group commit failed", "recovery failed"} {
		if n := len(walLines(ts, kind)); n > seconds {
			t.Errorf("%d lines %q for %d refusals in %d s, want at most one a second", n, kind, refusals, seconds)
		}
	}
	// The writer retries every second: its next line counts the others.
	counted := poll.Within(5*time.Second, func() bool {
		for _, line := range walLines(ts, "recovery failed") {
			if strings.Contains(line, "not_logged=") && !strings.Contains(line, "not_logged=0") {
				return true
			}
		}
		return false
	})
	if !counted {
		t.Fatalf("no line counts the lines held back:\n%s", strings.Join(walLines(ts, "wal:"), "\n"))
	}
}

// mountTmpfs mounts a tmpfs of size (e.g. "8m") for the test, or skips it
// where that is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("mounts a tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): run as root with CAP_SYS_ADMIN to test a real full disk", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	return mnt
}

// publishBig publishes event i with a payload of pad bytes and returns the
// status and the Retry-After header.
func publishBig(t *testing.T, ts *testServer, i, pad int) (status int, retryAfter, body string) {
	t.Helper()
	big := makeEvent(i, "disk")
	big["payload"] = map[string]any{"pad": strings.Repeat("x", pad)}
	req, _ := http.NewRequest(http.MethodPost, ts.base+"/publish", strings.NewReader(string(mustJSON(t, big))))
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(reply)
}

// listedIDs returns the event IDs listed for topic.
func listedIDs(ts *testServer, topic string) map[string]bool {
	ids := map[string]bool{}
	for _, e := range ts.listAll(topic) {
		ids[e.EventID] = true
	}
	return ids
}

// walLines returns the log's lines (component=wal) that contain msg.
func walLines(ts *testServer, msg string) []string {
	var out []string
	for line := range strings.Lines(ts.logs.String()) {
		if strings.Contains(line, "component=wal") && strings.Contains(line, msg) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// fillDisk writes path until the file system is full.
func fillDisk(tb testing.TB, path string) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil && !errors.Is(err, syscall.ENOSPC) {
		tb.Fatal(err)
	}
	if err != nil {
		return
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for i := 0; i < 1<<14; i++ { // bounded: 1 GiB at most
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				tb.Fatal(err)
			}
			break
		}
	}
	// Single pages left over by the chunked writes.
	for i := 0; i < 1<<10; i++ {
		if _, err := f.Write(chunk[:512]); err != nil {
			return
		}
	}
}

// TestSlowClientIsCut checks that a client that never finishes its headers
// is disconnected by the read-header timeout.
func TestSlowClientIsCut(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) { c.ReadHeaderTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("POST /publish HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = bufio.NewReader(conn).ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after 10s: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("cut after %v", took)
	}
}

// TestPublishWhileIndexOpens holds the index's file lock so that the server's
// index stays "opening": publishing must already work, reads and /readyz
// answer 503, and once the index opens the events appear.
func TestPublishWhileIndexOpens(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	holder, err := dedup.Open(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			if err := holder.Close(); err != nil {
				t.Error(err)
			}
		}
	}
	defer release()
	ts := startServerWith(t, dir, func(c *Config) { c.LockTimeout = 30 * time.Second })

	r := ts.publish([]any{makeEvent(1, "early"), makeEvent(2, "early"), makeEvent(1, "early")})
	if r.Enqueued != 3 || r.LastOffset != 3 {
		t.Fatalf("publish while the index opens: %+v", r)
	}
	for _, path := range []string{"/readyz", "/events", "/stats"} {
		if status, body := ts.do(http.MethodGet, path, "", nil); status != http.StatusServiceUnavailable {
			t.Fatalf("GET %s while the index opens: %d %s, want 503", path, status, body)
		}
	}

	release()
	ts.waitReady(30 * time.Second)
	st := ts.drain(10 * time.Second)
	if st.Received != 3 || st.UniqueProcessed != 2 || st.DuplicateDropped != 1 {
		t.Fatalf("after the index opened: %+v", st)
	}
}

// TestSlowBodyHoldsNoSlot starts a publish whose body never arrives in full,
// with one write-path slot and no wait for it: other publishes are still
// acknowledged (the slow request holds neither a slot nor the group commit,
// since the body is read and validated first), and the read timeout cuts the
// slow one, which writes nothing.
func TestSlowBodyHoldsNoSlot(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) {
		c.ReadTimeout = time.Second
		c.MaxInflightPublish = 1
		c.InflightWait = 0
	})
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := string(mustJSON(t, makeEvent(1, "slow")))
	if _, err := conn.Write([]byte("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body[:10])); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 4; i++ {
		ts.publish(makeEvent(i, "slow"))
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("slow body not cut within 10s (read %q)", reply)
	}
	if !strings.HasPrefix(string(reply), "HTTP/1.1 408") {
		t.Fatalf("slow request: reply %q, want 408", reply)
	}
	st := ts.drain(10 * time.Second)
	if st.Received != 3 {
		t.Fatalf("received %d, want the 3 complete publishes only", st.Received)
	}
}
