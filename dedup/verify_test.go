package dedup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	bolt "go.etcd.io/bbolt"
)

// checkedIndex builds a closed index with duplicates, malformed entries,
// expired events, several topics and runs, a cursor and a retention
// override, for CheckIndex to check.
func checkedIndex(tb testing.TB) string {
	tb.Helper()
	one := uint64(1)
	s, path := mustOpen(tb, &Options{Retention: event.Retention{Events: 30}, fanout: 4})
	if _, err := s.SetRetention("b", event.RetentionOverride{Events: &one}); err != nil {
		tb.Fatal(err)
	}
	if _, _, err := s.PutCursor("c1", "", 0); err != nil {
		tb.Fatal(err)
	}
	off := uint64(1)
	for chunk := range 12 {
		evs := append(topicEvents("a", chunk*5, 5), topicEvents("b", chunk, 1)...)
		evs = append(evs, ev("a", "0", baseTime), ev("", "x", baseTime)) // a duplicate, a malformed one
		mustApply(tb, s, entries(off, evs...))
		off += uint64(len(evs))
	}
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// editIndex changes an index file with bbolt directly.
func editIndex(tb testing.TB, path string, edit func(tx *bolt.Tx) error) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(edit); err != nil {
		tb.Fatal(err)
	}
}

func copyIndex(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	dst := filepath.Join(tb.TempDir(), "index.db")
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return dst
}

func TestCheckIndexClean(t *testing.T) {
	path := checkedIndex(t)
	rep, err := CheckIndex(path, 0)
	if err != nil || !rep.Clean() {
		t.Fatalf("CheckIndex: %v, findings %v", err, rep.Findings)
	}
	if rep.Unique != 72 || rep.Duplicates != 12 || rep.Malformed != 12 || rep.Stored != 31 || rep.Expired != 41 ||
		rep.Topics != 2 || rep.Keys != 72 || rep.Runs < 2 || rep.Format != formatVersion {
		t.Fatalf("report %+v", rep)
	}
}

// TestCheckIndexFindsDamage breaks a copy of a clean index in each way
// CheckIndex claims to find, and checks that it names it.
func TestCheckIndexFindsDamage(t *testing.T) {
	path := checkedIndex(t)
	put := func(bucket []byte, k, v []byte) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(k, v) }
	}
	firstEvent := func(tx *bolt.Tx) ([]byte, []byte) {
		k, v := tx.Bucket(bucketEvents).Cursor().First()
		return bytes.Clone(k), bytes.Clone(v)
	}
	cases := []struct {
		name, where, what string
		edit              func(tx *bolt.Tx) error
	}{
		{"counters", "meta", "counters do not add up", put(bucketMeta, metaDuplicates, putU64(13))},
		{"expired not counted", "events", "not dense", put(bucketMeta, metaExpired, putU64(40))},
		{"event lost", "byseq/a", "is not stored", func(tx *bolt.Tx) error {
			k, _ := firstEvent(tx)
			return tx.Bucket(bucketEvents).Delete(k)
		}},
		{"undecodable event", "events seq", "bad event value", func(tx *bolt.Tx) error {
			k, _ := firstEvent(tx)
			return tx.Bucket(bucketEvents).Put(k, []byte{9, 9})
		}},
		{"offset past checkpoint", "events seq", "past the checkpoint", func(tx *bolt.Tx) error {
			k, v := tx.Bucket(bucketEvents).Cursor().Last()
			v = bytes.Clone(v)
			copy(v[1:9], putU64(1_000_000))
			return tx.Bucket(bucketEvents).Put(bytes.Clone(k), v)
		}},
		{"ordinal gap", "byseq/a", "not dense", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketBySeq).Bucket([]byte("a"))
			k, _ := b.Cursor().Last()
			return b.Put(bytes.Clone(k), putU64(1000))
		}},
		{"time index entry lost", "bytime/a", "entries, byseq has", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketByTime).Bucket([]byte("a"))
			k, _ := b.Cursor().First()
			return b.Delete(bytes.Clone(k))
		}},
		{"time index wrong seq", "bytime/a", "is an event of topic", func(tx *bolt.Tx) error {
			bk, _ := tx.Bucket(bucketBySeq).Bucket([]byte("b")).Cursor().First()
			b := tx.Bucket(bucketByTime).Bucket([]byte("a"))
			k, _ := b.Cursor().First()
			return b.Put(bytes.Clone(k), bytes.Clone(bk))
		}},
		{"key with another seq", "events seq", "the seen set has key", func(tx *bolt.Tx) error {
			// The newest run holds keys of stored events.
			return rewriteLastRun(tx, func(b []byte) {
				n := blockLen(b)
				for i := range n {
					seqAt := b[4+4*n+8*i:]
					copy(seqAt, putU64(u64(seqAt[:8])-1))
				}
			})
		}},
		{"run entry miscounted", "seen run", "its entry says", func(tx *bolt.Tx) error {
			k, v := tx.Bucket(bucketRuns).Cursor().First()
			v = bytes.Clone(v)
			copy(v, putU64(u64(v[:8])+1))
			return tx.Bucket(bucketRuns).Put(bytes.Clone(k), v)
		}},
		{"run lost", "seen run", "bucket missing", func(tx *bolt.Tx) error {
			k, _ := tx.Bucket(bucketRuns).Cursor().First()
			return tx.Bucket(bucketSeen).DeleteBucket(bytes.Clone(k))
		}},
		{"bad cursor value", "consumers/c1", "bad stored value", put(bucketConsumers, []byte("c1"), []byte{7})},
		{"format", "meta", "format version 2", put(bucketMeta, metaVersion, putU64(2))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := copyIndex(t, path)
			editIndex(t, p, tc.edit)
			rep, err := CheckIndex(p, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !hasFinding(rep, tc.where, tc.what) {
				t.Fatalf("findings %v, want one at %q saying %q", rep.Findings, tc.where, tc.what)
			}
		})
	}
}

// rewriteLastRun edits (copies of) the blocks of the newest run.
func rewriteLastRun(tx *bolt.Tx, edit func([]byte)) error {
	rk, _ := tx.Bucket(bucketRuns).Cursor().Last()
	b := tx.Bucket(bucketSeen).Bucket(rk)
	var blocks [][2][]byte
	_ = b.ForEach(func(k, v []byte) error {
		blocks = append(blocks, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
		return nil
	})
	for _, kv := range blocks {
		edit(kv[1])
		if err := b.Put(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func hasFinding(rep *IndexReport, where, what string) bool {
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Where, where) && strings.Contains(f.What, what) {
			return true
		}
	}
	return false
}

// TestCheckIndexFindsFileDamage: damage to the pages themselves, found by
// CheckFile's walk or by bbolt's Tx.Check.
func TestCheckIndexFindsFileDamage(t *testing.T) {
	path := checkedIndex(t)
	t.Run("cut short", func(t *testing.T) {
		p := copyIndex(t, path)
		b, _ := os.ReadFile(p)
		m, pageSize := activeMeta(t, b)
		if err := os.WriteFile(p, b[:int(m.pgid-1)*pageSize], 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := CheckIndex(p, 0)
		if err != nil || !hasFinding(rep, "file", "shorter than") {
			t.Fatalf("%v, findings %v", err, rep.Findings)
		}
	})
	t.Run("keys out of order", func(t *testing.T) {
		// Rename the consumer cursor-150 to cursor-!50 in the file: the
		// bucket's page then holds its keys out of order, which only
		// bbolt's check sees (enough of them that the bucket has pages of
		// its own).
		p := copyIndex(t, path)
		editIndex(t, p, func(tx *bolt.Tx) error {
			for i := range 200 {
				if err := tx.Bucket(bucketConsumers).Put(fmt.Appendf(nil, "cursor-%03d", i), encodeCursorValue(0, "")); err != nil {
					return err
				}
			}
			return nil
		})
		b, _ := os.ReadFile(p)
		n := bytes.Count(b, []byte("cursor-150"))
		b = bytes.ReplaceAll(b, []byte("cursor-150"), []byte("cursor-!50"))
		if n == 0 || os.WriteFile(p, b, 0o600) != nil {
			t.Fatalf("could not edit the page (%d hits)", n)
		}
		rep, err := CheckIndex(p, 0)
		if err != nil || !hasFinding(rep, "pages", "") {
			t.Fatalf("%v, findings %v", err, rep.Findings)
		}
	})
	t.Run("in use", func(t *testing.T) {
		p := copyIndex(t, path)
		s := mustOpenPath(t, p, nil)
		if _, err := CheckIndex(p, 10*time.Millisecond); !errors.Is(err, ErrLocked) {
			t.Fatalf("CheckIndex of an open index: %v, want ErrLocked", err)
		}
		s.Close()
	})
	if _, err := CheckIndex(filepath.Join(t.TempDir(), "missing.db"), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("CheckIndex of a missing file: %v", err)
	}
}
