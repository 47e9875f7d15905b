package powerfs

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// inode is what the file system knows of one file or directory. Every
// field is guarded by FS.mu.
type inode struct {
	id  uint64
	dir bool

	// Where it is now: a name in a directory, or (parent nil) the root, or
	// a removed file, whose backing file waits in the trash until the cut
	// or the unmount, in case the cut brings it back.
	parent *inode
	name   string

	// Directories: the current entries, the entries as of the last fsync,
	// and the changes since then, in order.
	children map[string]*inode
	durable  map[string]*inode
	changes  []dirChange

	// Files: the data operations since the last fsync, in order, each with
	// what it overwrote.
	ops []dataOp
}

// entryOp sets name to ino in a directory, or removes name (ino nil).
type entryOp struct {
	name string
	ino  *inode
}

// dirChange is one unsynced change of a directory's entries, kept or
// dropped by a cut as a whole: a rename within the directory is one change
// of two entry operations.
type dirChange []entryOp

// apply makes the change in entries.
func (c dirChange) apply(entries map[string]*inode) {
	for _, op := range c {
		if op.ino == nil {
			delete(entries, op.name)
		} else {
			entries[op.name] = op.ino
		}
	}
}

// dataOp is one unsynced write or truncate of a file, with what is needed
// to undo it: the file's size before it and the bytes it overwrote.
type dataOp struct {
	truncate bool
	off      int64  // write: where it starts; truncate: the new size
	n        int64  // write: bytes written
	oldSize  int64  // the file's size before the operation
	old      []byte // write: the bytes [off, off+n) had below oldSize; truncate: the bytes cut off
}

// undo brings f back to its state before op, f being in the state right
// after op.
func (op *dataOp) undo(f *os.File) error {
	if op.truncate {
		if err := f.Truncate(op.oldSize); err != nil {
			return err
		}
		if len(op.old) > 0 {
			if _, err := f.WriteAt(op.old, op.off); err != nil {
				return err
			}
		}
		return nil
	}
	return op.keepPrefix(f, 0)
}

// keepPrefix brings f, in the state right after the write op, to the state
// in which only the first m bytes of op were written.
func (op *dataOp) keepPrefix(f *os.File, m int64) error {
	if m < int64(len(op.old)) {
		if _, err := f.WriteAt(op.old[m:], op.off+m); err != nil {
			return err
		}
	}
	return f.Truncate(max(op.oldSize, op.off+m))
}

// newInode registers a new inode.
func (p *FS) newInode(dir bool) *inode {
	p.nextID++
	ino := &inode{id: p.nextID, dir: dir}
	if dir {
		ino.children = make(map[string]*inode)
		ino.durable = make(map[string]*inode)
	}
	p.inodes[ino.id] = ino
	return ino
}

// location is the backing path of an inode: under its current name, or in
// the trash for a removed file.
func (p *FS) location(ino *inode) string {
	if ino == p.root {
		return p.backing
	}
	if ino.parent == nil {
		return filepath.Join(p.backing, reservedName, trashDir, strconv.FormatUint(ino.id, 10))
	}
	return filepath.Join(p.location(ino.parent), ino.name)
}

// link gives ino the name in dir, now, and records the change unless the
// caller records it itself.
func (p *FS) link(dir *inode, name string, ino *inode) {
	dir.children[name] = ino
	ino.parent, ino.name = dir, name
}

// unlink removes name from dir, now; the inode keeps no current name.
func (p *FS) unlink(dir *inode, name string) *inode {
	ino := dir.children[name]
	delete(dir.children, name)
	if ino != nil {
		ino.parent, ino.name = nil, ""
	}
	return ino
}

// syncDir makes dir's entries durable.
func (dir *inode) syncDir() {
	dir.durable = maps.Clone(dir.children)
	dir.changes = nil
}

// recordWrite writes data at off through fd and records the write with
// the bytes it overwrites.
func recordWrite(ino *inode, fd int, data []byte, off int64) (int, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat: %w", err)
	}
	var old []byte
	if off < st.Size {
		old = make([]byte, min(off+int64(len(data)), st.Size)-off)
		if err := preadFull(fd, old, off); err != nil {
			return 0, err
		}
	}
	n, err := pwriteFull(fd, data, off)
	if n > 0 {
		ino.ops = append(ino.ops, dataOp{off: off, n: int64(n), oldSize: st.Size, old: old[:min(len(old), n)]})
	}
	return n, err
}

// recordTruncate sets the size of the file at fd (or path, when fd < 0)
// and records it with the bytes it cuts off.
func recordTruncate(ino *inode, fd int, path string, size int64) error {
	if fd < 0 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		fd = int(f.Fd())
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	var old []byte
	if size < st.Size {
		old = make([]byte, st.Size-size)
		if err := preadFull(fd, old, size); err != nil {
			return err
		}
	}
	if err := syscall.Ftruncate(fd, size); err != nil {
		return fmt.Errorf("ftruncate: %w", err)
	}
	ino.ops = append(ino.ops, dataOp{truncate: true, off: size, oldSize: st.Size, old: old})
	return nil
}

// preadFull reads len(buf) bytes at off; the range must exist.
func preadFull(fd int, buf []byte, off int64) error {
	for done := 0; done < len(buf); {
		n, err := syscall.Pread(fd, buf[done:], off+int64(done))
		if err != nil {
			return fmt.Errorf("pread: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("pread: unexpected end of file at %d", off+int64(done))
		}
		done += n
	}
	return nil
}

// pwriteFull writes all of data at off, or returns how much it wrote and
// why it stopped.
func pwriteFull(fd int, data []byte, off int64) (int, error) {
	done := 0
	for done < len(data) {
		n, err := syscall.Pwrite(fd, data[done:], off+int64(done))
		if err != nil {
			return done, fmt.Errorf("pwrite: %w", err)
		}
		if n == 0 {
			return done, fmt.Errorf("pwrite: %w", syscall.EIO)
		}
		done += n
	}
	return done, nil
}
