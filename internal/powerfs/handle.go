package powerfs

import (
	"context"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// handle is an open file: a read-write descriptor of its backing file.
// It does not implement fs.FilePassthroughFder on purpose: the kernel
// would then read and write the backing file without this file system.
type handle struct {
	pfs *FS
	fd  int
	rec *inode
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

// Read reads from the backing file, without the lock: reads change
// nothing that a cut looks at.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.pfs.frozen.Load() {
		return nil, syscall.EIO
	}
	n, err := syscall.Pread(h.fd, dest, off)
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write writes through to the backing file and records the write.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	p := h.pfs
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return 0, syscall.EIO
	}
	n, err := recordWrite(h.rec, h.fd, data, off)
	if n > 0 || err == nil {
		return uint32(n), 0
	}
	return 0, errno(err)
}

// Flush (at each close(2) of a descriptor) has nothing to do: every write
// is already in the backing file, and close does not make it durable.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

// Release closes the backing descriptor, also after a cut.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	return errno(syscall.Close(h.fd))
}

// Rename moves name of n to newName of newParent, which must be a node of
// the same file system. A rename within one directory is one change of it;
// between two directories, one change in each.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.pfs != n.pfs {
		return syscall.EXDEV
	}
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	from, to := n.rec, np.rec
	src := from.children[name]
	dst := to.children[newName]
	if e := n.checkRename(src, dst, to, newName, flags); e != 0 || src == dst {
		return e
	}
	p := n.pfs
	// The replaced file goes to the trash first (the cut may bring it
	// back); a replaced directory is empty and rebuilt if brought back.
	if dst != nil {
		var err error
		if dst.dir {
			err = syscall.Rmdir(p.location(dst))
		} else {
			err = p.trash(dst)
		}
		if err != nil {
			return errno(err)
		}
	}
	if err := os.Rename(p.location(src), filepath.Join(p.location(to), newName)); err != nil {
		if dst != nil && !dst.dir {
			// Put the replaced file back; the rename did not happen.
			parent := dst.parent
			dst.parent = nil
			_ = os.Rename(p.location(dst), filepath.Join(p.location(parent), dst.name))
			dst.parent = parent
		}
		return errno(err)
	}
	p.unlink(from, name)
	p.unlink(to, newName)
	p.link(to, newName, src)
	if from == to {
		from.changes = append(from.changes, dirChange{{name: name}, {name: newName, ino: src}})
	} else {
		from.changes = append(from.changes, dirChange{{name: name}})
		to.changes = append(to.changes, dirChange{{name: newName, ino: src}})
	}
	return 0
}

// checkRename returns the errno rename(2) gives for moving src to newName
// in to, where dst is (nil: nothing is there).
func (n *node) checkRename(src, dst, to *inode, newName string, flags uint32) syscall.Errno {
	switch {
	case flags&fs.RENAME_EXCHANGE != 0 || flags&^uint32(unix.RENAME_NOREPLACE) != 0:
		return syscall.EINVAL
	case src == nil:
		return syscall.ENOENT
	case n.reserved(to, newName):
		return syscall.EPERM
	case dst != nil && flags&unix.RENAME_NOREPLACE != 0:
		return syscall.EEXIST
	case dst == nil || dst == src:
	case src.dir && !dst.dir:
		return syscall.ENOTDIR
	case !src.dir && dst.dir:
		return syscall.EISDIR
	case dst.dir && len(dst.children) > 0:
		return syscall.ENOTEMPTY
	}
	if src.dir {
		for d := to; d != nil; d = d.parent {
			if d == src {
				return syscall.EINVAL // into itself
			}
		}
	}
	return 0
}
