package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
)

// TestDamagedIndexStopsTheStart starts the real binary on data directories
// whose index.db is damaged: it exits non-zero before it listens, with one
// error line naming the file and what to do, and no panic or fault trace.
// An index bbolt can still open (one meta page zeroed) starts as usual.
func TestDamagedIndexStopsTheStart(t *testing.T) {
	bin := buildBinary(t)
	base, midWrite := indexFixtures(t)
	index, err := os.ReadFile(filepath.Join(base, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	meta := readBoltMeta(t, index)
	if used := meta.pgid * meta.pageSize; used <= 2<<20 {
		t.Fatalf("the index uses %d bytes, too few to cut at 2 MiB", used)
	}
	ps := int(meta.pageSize)
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		starts bool
	}{
		{"cut at 8 KiB", func(b []byte) []byte { return b[:8<<10] }, false},
		{"cut at 64 KiB", func(b []byte) []byte { return b[:64<<10] }, false},
		{"cut at 512 KiB", func(b []byte) []byte { return b[:512<<10] }, false},
		{"cut at 2 MiB", func(b []byte) []byte { return b[:2<<20] }, false},
		{"meta pages zeroed", func(b []byte) []byte { clear(b[:2*ps]); return b }, false},
		{"garbage after the meta pages", func(b []byte) []byte {
			r := rand.New(rand.NewPCG(1, 2))
			for i := 2 * ps; i < len(b); i++ {
				b[i] = byte(r.Uint32())
			}
			return b
		}, false},
		{"copy taken mid-write", func([]byte) []byte { return midWrite }, false},
		{"first meta page zeroed", func(b []byte) []byte { clear(b[:ps]); return b }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			copyDir(t, base, dir)
			path := filepath.Join(dir, "index.db")
			if err := os.WriteFile(path, tc.damage(append([]byte(nil), index...)), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.starts {
				p := startProc(t, bin, dir)
				newClient(t, p.base).waitReady(30 * time.Second)
				if code := p.terminate(t); code != 0 {
					t.Fatalf("exit status %d after SIGTERM", code)
				}
				return
			}
			checkRefusedStart(t, bin, dir, path)
		})
	}
}

// checkRefusedStart runs bin on dir and requires a non-zero exit before
// listening, with exactly one error line, naming path, and no trace.
func checkRefusedStart(t *testing.T, bin, dir, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--addr", "127.0.0.1:0", "--data-dir", dir).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("exit: %v, want a non-zero exit status\n%s", err, out)
	}
	text := string(out)
	for _, bad := range []string{"panic:", "goroutine ", "fatal error", "unexpected fault", "msg=listening"} {
		if strings.Contains(text, bad) {
			t.Fatalf("output holds %q:\n%s", bad, text)
		}
	}
	var errLines []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, "level=ERROR") {
			errLines = append(errLines, line)
		}
	}
	if len(errLines) != 1 || !strings.Contains(errLines[0], path) || !strings.Contains(errLines[0], "aggregator restore") {
		t.Fatalf("want one error line naming %s and what to do, got:\n%s", path, text)
	}
	t.Logf("exit %d: %s", ee.ExitCode(), strings.TrimSpace(errLines[0]))
}

// indexFixtures returns a data directory with an index of 20,000 events
// (over 2 MiB of pages) and its log, and a copy of that index as a copy
// taken while it was written would read it: the meta pages of an earlier
// state, the other pages of the later one. Its freelist page (the earlier
// state's) was reused for another page, so bbolt would panic on it
// ("invalid freelist page").
func indexFixtures(t *testing.T) (dir string, midWrite []byte) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "data")
	publishRound(t, dir, 0, 5)
	earlier, err := os.ReadFile(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	m := readBoltMeta(t, earlier)
	ps := int(m.pageSize)
	for round := 1; ; round++ {
		publishRound(t, dir, round, 15)
		later, err := os.ReadFile(filepath.Join(dir, "index.db"))
		if err != nil {
			t.Fatal(err)
		}
		// The page header's flags are at byte 8; 0x10 is a freelist page.
		if flags := binary.NativeEndian.Uint16(later[int(m.freelist)*ps+8:]); flags != 0x10 {
			midWrite = append(append([]byte(nil), earlier[:2*ps]...), later[2*ps:]...)
			return dir, midWrite
		}
		if round == 5 {
			t.Fatal("the earlier freelist page is still a freelist page after 5 rounds of writes")
		}
	}
}

// publishRound runs the server on dir, publishes batches of 1,000 events,
// waits until they are applied and stops it.
func publishRound(t *testing.T, dir string, round, batches int) {
	t.Helper()
	ts := startServer(t, dir, nil)
	for b := range batches {
		evs := make([]any, 1000)
		for i := range evs {
			e := makeEvent(i, fmt.Sprint("t", i%7))
			e["event_id"] = fmt.Sprintf("r%d-b%d-%d", round, b, i)
			e["payload"] = map[string]any{"pad": strings.Repeat("x", 100)}
			evs[i] = e
		}
		ts.publish(evs)
	}
	ts.drain(30 * time.Second)
	ts.stop(t)
}

// boltMeta holds the fields of bbolt's active meta page the test aims at.
type boltMeta struct{ pageSize, freelist, pgid uint64 }

// readBoltMeta decodes the meta page with the higher transaction id (the
// page header is 16 bytes; the meta's page size is at 8, the freelist page
// at 32, the page count at 40, the transaction id at 48).
func readBoltMeta(t *testing.T, b []byte) boltMeta {
	t.Helper()
	ne := binary.NativeEndian
	ps := int(ne.Uint32(b[16+8:]))
	if ps < 1024 || 2*ps > len(b) {
		t.Fatalf("page size %d in a file of %d bytes", ps, len(b))
	}
	m := b[16:]
	if ne.Uint64(b[ps+16+48:]) > ne.Uint64(m[48:]) {
		m = b[ps+16:]
	}
	return boltMeta{pageSize: uint64(ps), freelist: ne.Uint64(m[32:]), pgid: ne.Uint64(m[40:])}
}

// copyDir copies the regular files of src, and of its subdirectories, to
// dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpenStoreTurnsBboltCrashesIntoErrors opens damaged index files
// without the check: bbolt's fault on its memory map (the freelist page cut
// off the end of the file: SIGBUS) and its panic (a freelist page of
// another type) come back as errors.
func TestOpenStoreTurnsBboltCrashesIntoErrors(t *testing.T) {
	index, m := smallIndex(t)
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		want   string
	}{
		{"freelist page cut off (SIGBUS)", func(b []byte) []byte { return b[:m.freelist*m.pageSize] }, "memory fault"},
		{"freelist page of another type (panic)", func(b []byte) []byte {
			b[m.freelist*m.pageSize+8] = 0x02 // a leaf page
			return b
		}, "invalid freelist page"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			if err := os.WriteFile(path, tc.damage(append([]byte(nil), index...)), 0o600); err != nil {
				t.Fatal(err)
			}
			st, err := openStore(path, nil)
			if err == nil {
				_ = st.Close()
				t.Fatal("opened a damaged index")
			}
			if !errors.Is(err, dedup.ErrDamaged) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("openStore: %v, want one line wrapping dedup.ErrDamaged, with %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// smallIndex writes an index of 2,000 events whose freelist page does not
// start at a power of two: cut there, the file ends right before the page
// and bbolt's map (a power of two, at least 32 KiB) still covers it, so
// reading it faults (SIGBUS) instead of reading outside the map.
func smallIndex(t *testing.T) ([]byte, boltMeta) {
	t.Helper()
	for range 10 { // the freelist page's place varies: bbolt's free pages are a map
		dir := t.TempDir()
		st := openTestStore(t, dir)
		evs := testEvents(2000)
		entries := make([]dedup.Entry, len(evs))
		for i := range evs {
			entries[i] = dedup.Entry{Offset: uint64(i + 1), Event: evs[i]}
		}
		if _, err := st.Apply(entries); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		index, err := os.ReadFile(filepath.Join(dir, "index.db"))
		if err != nil {
			t.Fatal(err)
		}
		m := readBoltMeta(t, index)
		if at := m.freelist * m.pageSize; at >= 2*m.pageSize && at&(at-1) != 0 {
			return index, m
		}
	}
	t.Fatal("the freelist page started at a power of two ten times")
	return nil, boltMeta{}
}
