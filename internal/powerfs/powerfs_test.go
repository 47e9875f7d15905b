package powerfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// create makes a new file with data, fsyncing the file if asked.
func create(tb testing.TB, path string, data string, fsync bool) {
	tb.Helper()
	if err := writeFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, data, fsync); err != nil {
		tb.Fatal(err)
	}
}

// appendTo appends data to an existing file, fsyncing it if asked.
func appendTo(tb testing.TB, path string, data string, fsync bool) {
	tb.Helper()
	if err := writeFile(path, os.O_WRONLY|os.O_APPEND, data, fsync); err != nil {
		tb.Fatal(err)
	}
}

func writeFile(path string, flag int, data string, fsync bool) error {
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if err == nil && fsync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncDir(tb testing.TB, path string) {
	tb.Helper()
	d, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil {
		tb.Fatalf("fsync dir %s: %v", path, err)
	}
}

// content returns the file's content, or "<absent>".
func content(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "<absent>"
	}
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func want(tb testing.TB, path, wantContent string) {
	tb.Helper()
	if got := content(tb, path); got != wantContent {
		tb.Errorf("%s: %q, want %q", path, got, wantContent)
	}
}

// durableFile makes a file with data whose data and name are durable.
func durableFile(tb testing.TB, m *mounted, name, data string) string {
	tb.Helper()
	path := m.path(name)
	create(tb, path, data, true)
	syncDir(tb, m.mnt)
	return path
}

func TestWriteWithoutFsyncIsLost(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "f", "durable")
	appendTo(t, path, " unsynced", false)
	want(t, path, "durable unsynced") // visible before the cut
	rep := m.cut(DropAll, 1)
	want(t, path, "durable")
	if rep.DataOps != 1 || rep.DataOpsKept != 0 || rep.BytesDropped != 9 {
		t.Errorf("report %+v", rep)
	}
}

func TestWriteWithFsyncIsKept(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "f", "durable")
	appendTo(t, path, " synced", true)
	// fdatasync, as bbolt calls it, makes the data and the size durable too.
	data := durableFile(t, m, "g", "durable")
	f, err := os.OpenFile(data, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(" datasynced"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.cut(DropAll, 1)
	want(t, path, "durable synced")
	want(t, data, "durable datasynced")
	if u := m.fs.Unsynced(); u != (Unsynced{}) {
		t.Errorf("unsynced after remount: %+v", u)
	}
}

func TestNewFileWithoutDirFsyncIsGone(t *testing.T) {
	m := mountFS(t)
	create(t, m.path("f"), "data", true) // the file's fsync, not its directory's
	rep := m.cut(DropAll, 1)
	want(t, m.path("f"), "<absent>")
	if !slices.Equal(rep.Vanished, []string{"f"}) {
		t.Errorf("vanished %v, want [f]", rep.Vanished)
	}
}

func TestNewFileWithDirFsyncButNoFileFsyncIsEmpty(t *testing.T) {
	m := mountFS(t)
	create(t, m.path("f"), "data", false)
	syncDir(t, m.mnt)
	m.cut(DropAll, 1)
	want(t, m.path("f"), "")
}

func TestNewDirNeedsItsParentsFsync(t *testing.T) {
	m := mountFS(t)
	if err := os.Mkdir(m.path("d"), 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, m.path("d", "f"), "data", true)
	syncDir(t, m.path("d"))
	m.cut(DropAll, 1)
	if _, err := os.Stat(m.path("d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("d after the cut: %v, want it gone (its parent was never fsynced)", err)
	}

	if err := os.Mkdir(m.path("d"), 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, m.path("d", "f"), "data", true)
	syncDir(t, m.path("d"))
	syncDir(t, m.mnt)
	m.cut(DropAll, 2)
	want(t, m.path("d", "f"), "data")
}

func TestRenameWithoutDirFsyncIsReverted(t *testing.T) {
	m := mountFS(t)
	durableFile(t, m, "a", "old")
	durableFile(t, m, "tmp", "new")
	if err := os.Rename(m.path("tmp"), m.path("a")); err != nil {
		t.Fatal(err)
	}
	want(t, m.path("a"), "new")
	m.cut(DropAll, 1)
	want(t, m.path("a"), "old")
	want(t, m.path("tmp"), "new")

	if err := os.Rename(m.path("tmp"), m.path("a")); err != nil {
		t.Fatal(err)
	}
	syncDir(t, m.mnt)
	m.cut(DropAll, 2)
	want(t, m.path("a"), "new")
	want(t, m.path("tmp"), "<absent>")
}

func TestUnlinkWithoutDirFsyncComesBack(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "f", "durable")
	// Written and fsynced through a descriptor that outlives the name.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("+after unlink"); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want(t, path, "<absent>")
	rep := m.cut(DropAll, 1)
	want(t, path, "durable+after unlink")
	if !slices.Equal(rep.Revived, []string{"f"}) {
		t.Errorf("revived %v, want [f]", rep.Revived)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	syncDir(t, m.mnt)
	m.cut(DropAll, 2)
	want(t, path, "<absent>")
}

func TestTruncateAndOverwriteAreReverted(t *testing.T) {
	m := mountFS(t)
	data := strings.Repeat("0123456789", 1000)
	path := durableFile(t, m, "f", data)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("XXXX"), 5000); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(20000); err != nil { // grows with zeros
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("tail"), 30000); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// O_TRUNC at open is a truncate as well.
	g, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	want(t, path, "")
	rep := m.cut(DropAll, 1)
	if got := content(t, path); got != data {
		t.Fatalf("after the cut: %d bytes, want the %d durable ones back", len(got), len(data))
	}
	if rep.DataOps != 5 {
		t.Errorf("report %+v, want 5 data operations", rep)
	}
}

func TestMoveBetweenDirectories(t *testing.T) {
	for _, tc := range []struct {
		sync    []string // directories fsynced after the move
		a, b    string   // contents of a/x and b/x after the cut
		copies  int
		comment string
	}{
		{nil, "x", "<absent>", 0, "neither directory synced: not moved"},
		{[]string{"a", "b"}, "<absent>", "x", 0, "both synced: moved"},
		{[]string{"b"}, "x", "x", 1, "only the new name durable: under both names"},
		{[]string{"a"}, "<absent>", "<absent>", 0, "only the removal durable: gone"},
	} {
		t.Run(strings.Join(tc.sync, "+"), func(t *testing.T) {
			m := mountFS(t)
			for _, d := range []string{"a", "b"} {
				if err := os.Mkdir(m.path(d), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			syncDir(t, m.mnt)
			create(t, m.path("a", "x"), "x", true)
			syncDir(t, m.path("a"))
			if err := os.Rename(m.path("a", "x"), m.path("b", "x")); err != nil {
				t.Fatal(err)
			}
			for _, d := range tc.sync {
				syncDir(t, m.path(d))
			}
			rep := m.cut(DropAll, 1)
			want(t, m.path("a", "x"), tc.a)
			want(t, m.path("b", "x"), tc.b)
			if rep.Copies != tc.copies {
				t.Errorf("%s: %d copies, want %d", tc.comment, rep.Copies, tc.copies)
			}
		})
	}
}

// TestTornKeepsAPrefix appends ten numbered writes and cuts in torn mode
// with many seeds: the file must always hold a prefix of what was written,
// and the directory a prefix of its creates, and the seeds must reach
// different prefixes, torn writes among them.
func TestTornKeepsAPrefix(t *testing.T) {
	m := mountFS(t)
	lengths := map[int]bool{}
	names := map[int]bool{}
	torn := 0
	for seed := range uint64(24) {
		dir := fmt.Sprintf("d%d", seed)
		if err := os.Mkdir(m.path(dir), 0o700); err != nil {
			t.Fatal(err)
		}
		syncDir(t, m.mnt)
		create(t, m.path(dir, "log"), "", true)
		syncDir(t, m.path(dir))
		var all strings.Builder
		for i := range 10 {
			w := fmt.Sprintf("<write %d>", i)
			all.WriteString(w)
			appendTo(t, m.path(dir, "log"), w, false)
			create(t, m.path(dir, fmt.Sprintf("n%d", i)), "", false)
		}
		rep := m.cut(Torn, seed)
		got := content(t, m.path(dir, "log"))
		if !strings.HasPrefix(all.String(), got) {
			t.Fatalf("seed %d: %q is not a prefix of %q", seed, got, all.String())
		}
		lengths[len(got)] = true
		torn += rep.TornWrites
		ents, err := os.ReadDir(m.path(dir))
		if err != nil {
			t.Fatal(err)
		}
		// "log" plus n0..n(k-1): sorted, n-names in order.
		for i, e := range ents[1:] {
			if e.Name() != fmt.Sprintf("n%d", i) {
				t.Fatalf("seed %d: entries %v are not a prefix of the creates", seed, ents)
			}
		}
		names[len(ents)-1] = true
	}
	if len(lengths) < 5 || len(names) < 5 || torn == 0 {
		t.Fatalf("24 torn cuts reached only %d file lengths, %d entry counts, %d torn writes", len(lengths), len(names), torn)
	}
}

func TestOperationsFailAfterCut(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "f", "durable")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := m.fs.Cut(DropAll, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.fs.Cut(DropAll, nil); !errors.Is(err, ErrCut) {
		t.Errorf("second cut: %v, want ErrCut", err)
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, syscall.EIO) {
		t.Errorf("write after the cut: %v, want EIO", err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("fsync after the cut: %v, want EIO", err)
	}
	if err := os.WriteFile(m.path("g"), nil, 0o600); !errors.Is(err, syscall.EIO) {
		t.Errorf("create after the cut: %v, want EIO", err)
	}
	f.Close()
	if err := m.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	m.mount()
	want(t, path, "durable")
}

func TestCleanUnmountKeepsEverything(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "f", "durable")
	appendTo(t, path, "+unsynced", false)
	create(t, m.path("new"), "new", false)
	if err := os.Remove(m.path("new")); err != nil {
		t.Fatal(err)
	}
	create(t, m.path("g"), "g", false)
	if err := m.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(m.backing)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, []string{"f", "g"}) {
		t.Fatalf("backing directory after a clean unmount: %v, want [f g] (no trash)", got)
	}
	m.mount()
	want(t, path, "durable+unsynced")
}

func TestReservedNameIsHidden(t *testing.T) {
	m := mountFS(t)
	ents, err := os.ReadDir(m.mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("root lists %v, want nothing", ents)
	}
	if err := os.Mkdir(m.path(reservedName), 0o700); !errors.Is(err, syscall.EPERM) {
		t.Errorf("mkdir %s: %v, want EPERM", reservedName, err)
	}
}

// TestFlock: flock works on the mount (the kernel handles it), as the
// service's LOCK file and bbolt need.
func TestFlock(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "LOCK", "")
	a, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("first flock: %v", err)
	}
	if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("second flock: %v, want EWOULDBLOCK", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock after the holder closed: %v", err)
	}
}

func TestLargeWritesAndReads(t *testing.T) {
	m := mountFS(t)
	path := durableFile(t, m, "big", "")
	data := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz012345"), 1<<15) // 1 MiB: many FUSE writes
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil { // unsynced
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := content(t, path); len(got) != 2*len(data) {
		t.Fatalf("%d bytes before the cut, want %d", len(got), 2*len(data))
	}
	m.cut(DropAll, 1)
	if got := content(t, path); got != string(data) {
		t.Fatalf("%d bytes after the cut, want the %d synced ones", len(got), len(data))
	}
}
