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
)

// TestDiskFullAnswers503AndRecovers runs the server on a small tmpfs that it
// fills for real: publishing answers 503 with Retry-After and acknowledges
// nothing, /readyz says not ready, reads keep working, and once space is
// freed writes resume by themselves.
func TestDiskFullAnswers503AndRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): run as root with CAP_SYS_ADMIN to test a real full disk", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	ts := startServerWith(t, filepath.Join(mnt, "data"), func(c *Config) {
		c.ReadTimeout = 10 * time.Second
		c.SegmentSize = 1 << 20
	})
	ts.waitReady(30 * time.Second)
	ts.publish(makeEvent(1, "disk"))
	ts.drain(10 * time.Second)

	fillDisk(t, filepath.Join(mnt, "filler-1"))
	// Large enough to need pages the full disk does not have.
	big := makeEvent(2, "disk")
	big["payload"] = map[string]any{"pad": strings.Repeat("x", 256<<10)}
	req, _ := http.NewRequest(http.MethodPost, ts.base+"/publish", strings.NewReader(string(mustJSON(t, big))))
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("publish on a full disk: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// The reason is named, the files of the data directory are not (the
	// whole error is in the server's log).
	if !strings.Contains(string(reply), "no space left on device") || strings.Contains(string(reply), mnt) {
		t.Fatalf("publish on a full disk: body %s: want the reason without a server path", reply)
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
	// The failed write was cut back: take that space too.
	fillDisk(t, filepath.Join(mnt, "filler-2"))
	if status, _ := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(3, "disk"))); status != http.StatusServiceUnavailable {
		t.Fatalf("second publish on a full disk: %d", status)
	}

	for _, f := range []string{"filler-1", "filler-2"} {
		if err := os.Remove(filepath.Join(mnt, f)); err != nil {
			t.Fatal(err)
		}
	}
	ts.waitReady(10 * time.Second)
	ts.publish(makeEvent(4, "disk"))
	st := ts.drain(10 * time.Second)
	ids := map[string]bool{}
	for _, e := range ts.listAll("disk") {
		ids[e.EventID] = true
	}
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
