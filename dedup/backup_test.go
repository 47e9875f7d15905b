package dedup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/aggregator-dev/aggregator/event"
)

// slowWriter calls during before each write.
type slowWriter struct {
	buf    bytes.Buffer
	writes int
	during func()
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if w.writes++; w.during != nil {
		w.during()
	}
	return w.buf.Write(p)
}

// TestBackupWhileApplying takes a backup while chunks are applied, and
// restores it: the snapshot holds exactly the chunks committed before its
// transaction began.
func TestBackupWhileApplying(t *testing.T) {
	s, _ := mustOpen(t, &Options{Retention: event.Retention{Events: 400}})
	off := uint64(1)
	applyChunk := func(n int) {
		evs := make([]event.Event, n)
		for i := range evs {
			evs[i] = ev(fmt.Sprint("t", off%3), fmt.Sprint(off+uint64(i)), baseTime)
		}
		evs[0] = ev("t0", "1", baseTime) // a duplicate in every chunk
		mustApply(t, s, entries(off, evs...))
		off += uint64(n)
	}
	for range 10 {
		applyChunk(100)
	}
	before := mustStats(t, s)
	// Chunks are applied while the stream is written (between its writes,
	// so deterministically during the read transaction).
	w := &slowWriter{}
	w.during = func() {
		if w.writes%4 == 0 {
			applyChunk(50)
		}
	}
	h, err := s.Backup(w, func(h BackupHeader) error {
		if h.Checkpoint != before.Checkpoint {
			return fmt.Errorf("header checkpoint %d, want %d", h.Checkpoint, before.Checkpoint)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if int64(w.buf.Len()) != h.Length() {
		t.Fatalf("stream of %d bytes, header says %d", w.buf.Len(), h.Length())
	}
	if after := mustStats(t, s); after.Checkpoint <= h.Checkpoint || h.Checkpoint != before.Checkpoint {
		t.Fatalf("applied during the backup: checkpoint %d, backup's %d", after.Checkpoint, h.Checkpoint)
	}
	path := filepath.Join(t.TempDir(), "restored.db")
	got, err := RestoreBackup(bytes.NewReader(w.buf.Bytes()), path)
	if err != nil || got != h {
		t.Fatalf("RestoreBackup: %+v, %v (header %+v)", got, err, h)
	}
	r := mustOpenPath(t, path, &Options{Retention: event.Retention{Events: 400}})
	st := checkInvariants(t, r)
	if st.Checkpoint != h.Checkpoint || st.LastSeq != h.LastSeq || st.Expired != h.Expired {
		t.Fatalf("restored %+v, header %+v", st, h)
	}
	// Every event the original still holds up to the snapshot's last seq
	// is in the copy, and the copy applies the log after its checkpoint.
	for _, e := range feedAll(t, s, "", 0, 1000) {
		if e.Seq > h.LastSeq {
			break
		}
		found := false
		if _, err := r.Feed(event.FeedQuery{After: e.Seq - 1, Limit: 1}, func(g *event.Stored) bool {
			found = g.Seq == e.Seq && g.EventID == e.EventID && g.Offset == e.Offset
			return false
		}); err != nil || !found {
			t.Fatalf("seq %d (%s) not in the restored index: %v", e.Seq, e.EventID, err)
		}
	}
	if res := mustApply(t, r, entries(h.Checkpoint+1, ev("t0", "1", baseTime), ev("new", "1", baseTime))); res.Duplicates != 1 || res.Unique != 1 {
		t.Fatalf("the restored index applies on: %+v", res)
	}
}

// TestRestoreRefusesDamagedBackups: every way of breaking a stream is
// refused, and leaves no file behind.
func TestRestoreRefusesDamagedBackups(t *testing.T) {
	s, _ := mustOpen(t, nil)
	mustApply(t, s, entries(1, topicEvents("a", 0, 50)...))
	var buf bytes.Buffer
	h, err := s.Backup(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	dbStart := int(h.Length() - h.Size - trailerLen)
	cases := map[string][]byte{
		"empty":            nil,
		"not a backup":     []byte("SQLite format 3\x00 and so on and so forth"),
		"cut in header":    good[:10],
		"cut in database":  good[:dbStart+int(h.Size)/2],
		"no trailer":       good[:len(good)-trailerLen],
		"cut in trailer":   good[:len(good)-3],
		"trailing garbage": append(bytes.Clone(good), "x"...),
		"flipped db byte":  flip(good, dbStart+int(h.Size)/3),
		"flipped header":   flip(good, 14),
		"flipped crc":      flip(good, len(good)-1),
	}
	for name, stream := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			_, err := RestoreBackup(bytes.NewReader(stream), path)
			if !errors.Is(err, ErrBadBackup) {
				t.Fatalf("RestoreBackup: %v, want ErrBadBackup", err)
			}
			if _, err := Open(path, &Options{ReadOnly: true}); err == nil {
				t.Fatal("a refused restore left an index behind")
			}
		})
	}
	if _, err := s.Backup(failingWriter{}, nil); err == nil {
		t.Fatal("Backup to a failing writer succeeded")
	}
	stop := errors.New("stop")
	if _, err := s.Backup(io.Discard, func(BackupHeader) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Backup with a failing begin: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x20
	return c
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
