package dedup

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildIndex writes an index of n events (applied in chunks of 500) and
// closes it; it returns the file's path.
func buildIndex(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "index.db")
	s, err := Open(path, &Options{ExpectedKeys: 1024})
	if err != nil {
		tb.Fatal(err)
	}
	for first := 0; first < n; first += 500 {
		evs := make([]Entry, 0, 500)
		for i := first; i < min(first+500, n); i++ {
			e := ev(fmt.Sprint("t", i%7), fmt.Sprint("id-", i), baseTime)
			e.Payload = []byte(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 100)))
			evs = append(evs, Entry{Offset: uint64(i + 1), Event: e})
		}
		mustApply(tb, s, evs)
	}
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// activeMeta decodes the meta page bbolt uses, for the tests to aim at.
func activeMeta(tb testing.TB, b []byte) (m boltMeta, pageSize int) {
	tb.Helper()
	m0 := decodeMeta(b)
	pageSize = int(m0.pageSize)
	m1 := decodeMeta(b[pageSize:])
	if m1.txid > m0.txid {
		return m1, pageSize
	}
	return m0, pageSize
}

func TestCheckFileAcceptsHealthyIndexes(t *testing.T) {
	for _, n := range []int{0, 10, 20_000} {
		path := buildIndex(t, n)
		if err := CheckFile(path); err != nil {
			t.Errorf("%d events: %v", n, err)
		}
	}
	dir := t.TempDir()
	if err := CheckFile(filepath.Join(dir, "missing.db")); err != nil {
		t.Errorf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(empty); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

// TestCheckFileRefusesDamage: each way of breaking the file is found, with
// the file named; one meta page zeroed is no damage (bbolt uses the other).
func TestCheckFileRefusesDamage(t *testing.T) {
	healthy := buildIndex(t, 20_000)
	orig, err := os.ReadFile(healthy)
	if err != nil {
		t.Fatal(err)
	}
	m, ps := activeMeta(t, orig)
	if used := int(m.pgid) * ps; used <= 2<<20 {
		t.Fatalf("the index uses %d bytes, too few to cut at 2 MiB", used)
	}
	zero := func(b []byte, from, n int) []byte { clear(b[from : from+n]); return b }
	cases := []struct {
		name   string
		damage func(b []byte) []byte
		ok     bool
	}{
		{"cut at 8 KiB", func(b []byte) []byte { return b[:8<<10] }, false},
		{"cut at 64 KiB", func(b []byte) []byte { return b[:64<<10] }, false},
		{"cut at 512 KiB", func(b []byte) []byte { return b[:512<<10] }, false},
		{"cut at 2 MiB", func(b []byte) []byte { return b[:2<<20] }, false},
		{"cut at 100 bytes", func(b []byte) []byte { return b[:100] }, false},
		{"both meta pages zeroed", func(b []byte) []byte { return zero(b, 0, 2*ps) }, false},
		{"meta checksums wrong", func(b []byte) []byte {
			b[pageHeaderSize+20]++
			b[ps+pageHeaderSize+20]++
			return b
		}, false},
		{"all garbage", func(b []byte) []byte {
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}, false},
		{"garbage after the meta pages", func(b []byte) []byte {
			r := rand.New(rand.NewPCG(3, 4))
			for i := 2 * ps; i < len(b); i++ {
				b[i] = byte(r.Uint32())
			}
			return b
		}, false},
		{"freelist page zeroed", func(b []byte) []byte { return zero(b, int(m.freelist)*ps, ps) }, false},
		{"freelist page of another type", func(b []byte) []byte {
			b[int(m.freelist)*ps+8] = flagLeaf
			return b
		}, false},
		{"root page zeroed", func(b []byte) []byte { return zero(b, int(m.root)*ps, ps) }, false},
		{"root page element out of the page", func(b []byte) []byte {
			nativeEndian.PutUint32(b[int(m.root)*ps+pageHeaderSize+4:], uint32(ps))
			return b
		}, false},
		{"root page lists too many elements", func(b []byte) []byte {
			nativeEndian.PutUint16(b[int(m.root)*ps+10:], 0xFFFF)
			return b
		}, false},
		{"first meta page zeroed", func(b []byte) []byte { return zero(b, 0, ps) }, true},
		{"garbage appended", func(b []byte) []byte { return append(b, "garbage"...) }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			if err := os.WriteFile(path, tc.damage(append([]byte(nil), orig...)), 0o600); err != nil {
				t.Fatal(err)
			}
			err := CheckFile(path)
			if tc.ok {
				if err != nil {
					t.Fatalf("CheckFile: %v, want nil", err)
				}
				mustOpenPath(t, path, nil) // and bbolt opens it
				return
			}
			var de *DamageError
			if !errors.Is(err, ErrDamaged) || !errors.As(err, &de) || de.Path != path {
				t.Fatalf("CheckFile: %v, want a *DamageError for %s", err, path)
			}
			t.Logf("%v", err)
		})
	}
}

// TestCheckFileNeverPanics damages a small index at random places (bytes
// set at random, in the meta pages too with their checksums fixed, so that
// the check gets past them): CheckFile returns nil or an error, and never
// panics, whatever it reads.
func TestCheckFileNeverPanics(t *testing.T) {
	orig, err := os.ReadFile(buildIndex(t, 1000))
	if err != nil {
		t.Fatal(err)
	}
	_, ps := activeMeta(t, orig)
	r := rand.New(rand.NewPCG(5, 6))
	path := filepath.Join(t.TempDir(), "index.db")
	for range 300 {
		b := append([]byte(nil), orig...)
		for range 1 + r.IntN(8) {
			b[r.IntN(len(b))] = byte(r.Uint32())
		}
		if r.IntN(3) == 0 { // a meta field set at random, checksum valid
			page := r.IntN(2) * ps
			field := pageHeaderSize + 16 + 8*r.IntN(5)
			nativeEndian.PutUint64(b[page+field:], r.Uint64N(uint64(len(b)/ps)+2))
			fixMetaSum(b[page:])
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_ = CheckFile(path) // a panic fails the test
	}
}

// fixMetaSum recomputes the checksum of the meta page at the start of b.
func fixMetaSum(b []byte) {
	m := decodeMeta(b)
	nativeEndian.PutUint64(b[pageHeaderSize+metaSumOffset:], m.sum)
}

// TestCheckFileSkipsAFileInUse: while a bbolt writer holds the file's lock,
// what CheckFile would read may be torn, so it checks nothing; Open then
// reports the lock.
func TestCheckFileSkipsAFileInUse(t *testing.T) {
	path := buildIndex(t, 10)
	s := mustOpenPath(t, path, nil) // holds bbolt's lock
	if err := CheckFile(path); err != nil {
		t.Fatalf("CheckFile on a file in use: %v, want nil (not checked)", err)
	}
	if _, err := Open(path, &Options{LockTimeout: 10 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open of a file in use: %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(path); !errors.Is(err, ErrDamaged) {
		t.Fatalf("CheckFile once released: %v, want ErrDamaged", err)
	}
}
