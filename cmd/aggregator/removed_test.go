package main

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// TestDataDirRemovedRefusesPublishing removes or replaces the data
// directory, or the index file, under a running server: within 2 s
// publishing answers 503 and /readyz 503, one error line says why, and
// nothing is recreated. After rm -rf not even the first publish gets a 200:
// its segment has no link left when its fsync returns.
func TestDataDirRemovedRefusesPublishing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		atOnce bool // the first publish after the damage is refused already
	}{
		{"rm -rf data dir", func(t *testing.T, dir string) { mustDo(t, os.RemoveAll(dir)) }, true},
		{"rm wal dir", func(t *testing.T, dir string) { mustDo(t, os.RemoveAll(filepath.Join(dir, "wal"))) }, true},
		{"rm index.db", func(t *testing.T, dir string) { mustDo(t, os.Remove(filepath.Join(dir, "index.db"))) }, false},
		{"data dir moved away", func(t *testing.T, dir string) { mustDo(t, os.Rename(dir, dir+".old")) }, false},
		{"data dir replaced", func(t *testing.T, dir string) {
			mustDo(t, os.Rename(dir, dir+".old"))
			mustDo(t, os.Mkdir(dir, 0o700))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			ts := startServer(t, dir, nil)
			ts.publish(makeEvent(1, "gone"))
			ts.drain(10 * time.Second)

			start := time.Now()
			tc.damage(t, dir)
			if tc.atOnce {
				if status, body := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(2, "gone"))); status != http.StatusServiceUnavailable {
					t.Fatalf("first publish after %s: %d %s, want 503", tc.name, status, body)
				}
			}
			var pubStatus, readyStatus int
			var readyBody []byte
			refused := poll.Within(2*time.Second, func() bool {
				pubStatus, _ = ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(3, "gone")))
				readyStatus, readyBody = ts.do(http.MethodGet, "/readyz", "", nil)
				return pubStatus == http.StatusServiceUnavailable && readyStatus == http.StatusServiceUnavailable
			})
			if !refused {
				t.Fatalf("2 s after %s: publish %d, readyz %d %s; want 503 and 503", tc.name, pubStatus, readyStatus, readyBody)
			}
			t.Logf("%s: refused after %v: %s", tc.name, time.Since(start).Round(time.Millisecond), readyBody)
			if !strings.Contains(string(readyBody), "removed") && !strings.Contains(string(readyBody), "replaced") {
				t.Errorf("readyz does not say what happened: %s", readyBody)
			}
			if lines := walLines(ts, "log files removed or replaced while open"); len(lines) != 1 || !strings.Contains(lines[0], "level=ERROR") {
				t.Errorf("want one error line about the removal, got %q", lines)
			}
			// Still refused later: no recovery recreates the files.
			if status, _ := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, makeEvent(4, "gone"))); status != http.StatusServiceUnavailable {
				t.Fatalf("publish later: %d, want 503", status)
			}
			if tc.name == "rm -rf data dir" {
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("the data directory was recreated: %v", err)
				}
			}
			ts.cancel()
			if err := <-ts.done; err != nil {
				t.Logf("Run after %s: %v", tc.name, err)
			}
			ts.done = nil
		})
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
