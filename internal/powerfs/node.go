package powerfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is the FUSE side of an inode. go-fuse may make several nodes for one
// inode over time (it forgets nodes the kernel forgot); the inode is the
// identity.
type node struct {
	fs.Inode
	pfs *FS
	rec *inode
}

var (
	_ fs.NodeLookuper  = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeReaddirer = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRmdirer   = (*node)(nil)
	_ fs.NodeRenamer   = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeStatfser  = (*node)(nil)
	_ fs.NodeAllocater = (*node)(nil)
)

// lock takes the file system's lock, or reports EIO after a cut.
func (n *node) lock() syscall.Errno {
	n.pfs.mu.Lock()
	if n.pfs.cut {
		n.pfs.mu.Unlock()
		return syscall.EIO
	}
	return 0
}

func (n *node) unlock() { n.pfs.mu.Unlock() }

// child returns the FUSE node of ino, a child of n.
func (n *node) child(ctx context.Context, ino *inode) *fs.Inode {
	mode := uint32(fuse.S_IFREG)
	if ino.dir {
		mode = fuse.S_IFDIR
	}
	return n.NewInode(ctx, &node{pfs: n.pfs, rec: ino}, fs.StableAttr{Mode: mode, Ino: ino.id})
}

// stat fills attr from the handle's file, or from the inode's location.
func (n *node) stat(ino *inode, h *handle, attr *fuse.Attr) syscall.Errno {
	var st syscall.Stat_t
	var err error
	if h != nil {
		err = syscall.Fstat(h.fd, &st)
	} else {
		err = syscall.Lstat(n.pfs.location(ino), &st)
	}
	if err != nil {
		return errno(err)
	}
	attr.FromStat(&st)
	attr.Ino = ino.id
	return 0
}

// reserved reports whether name may not be created in dir.
func (n *node) reserved(dir *inode, name string) bool {
	return dir == n.pfs.root && name == reservedName
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.lock(); e != 0 {
		return nil, e
	}
	defer n.unlock()
	ino := n.rec.children[name]
	if ino == nil {
		return nil, syscall.ENOENT
	}
	if e := n.stat(ino, nil, &out.Attr); e != 0 {
		return nil, e
	}
	return n.child(ctx, ino), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	h, _ := f.(*handle)
	return n.stat(n.rec, h, &out.Attr)
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	h, _ := f.(*handle)
	path := n.pfs.location(n.rec)
	if size, ok := in.GetSize(); ok {
		if n.rec.dir {
			return syscall.EISDIR
		}
		fd := -1
		if h != nil {
			fd = h.fd
		}
		if err := recordTruncate(n.rec, fd, path, int64(size)); err != nil {
			return errno(err)
		}
	}
	if mode, ok := in.GetMode(); ok {
		if err := syscall.Chmod(path, mode); err != nil {
			return errno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		suid, sgid := -1, -1
		if uok {
			suid = int(uid)
		}
		if gok {
			sgid = int(gid)
		}
		if err := os.Lchown(path, suid, sgid); err != nil {
			return errno(err)
		}
	}
	if e := setTimes(path, in); e != 0 {
		return e
	}
	return n.stat(n.rec, h, &out.Attr)
}

// setTimes sets the access and modification times that in asks for.
func setTimes(path string, in *fuse.SetAttrIn) syscall.Errno {
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if !mok && !aok {
		return 0
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if aok {
		ts[0] = unix.NsecToTimespec(atime.UnixNano())
	}
	if mok {
		ts[1] = unix.NsecToTimespec(mtime.UnixNano())
	}
	return errno(unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW))
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if e := n.lock(); e != 0 {
		return nil, e
	}
	defer n.unlock()
	names := slices.Sorted(func(yield func(string) bool) {
		for name := range n.rec.children {
			if !yield(name) {
				return
			}
		}
	})
	list := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		ino := n.rec.children[name]
		mode := uint32(fuse.S_IFREG)
		if ino.dir {
			mode = fuse.S_IFDIR
		}
		list = append(list, fuse.DirEntry{Name: name, Mode: mode, Ino: ino.id})
	}
	return fs.NewListDirStream(list), 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if e := n.lock(); e != 0 {
		return nil, nil, 0, e
	}
	defer n.unlock()
	if n.reserved(n.rec, name) {
		return nil, nil, 0, syscall.EPERM
	}
	if ino := n.rec.children[name]; ino != nil {
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		if ino.dir {
			return nil, nil, 0, syscall.EISDIR
		}
		h, e := n.openFile(ino, flags)
		if e == 0 {
			e = n.stat(ino, h, &out.Attr)
		}
		if e != 0 {
			return nil, nil, 0, e
		}
		return n.child(ctx, ino), h, 0, 0
	}
	path := filepath.Join(n.pfs.location(n.rec), name)
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, mode&0o7777)
	if err != nil {
		return nil, nil, 0, errno(err)
	}
	// The kernel applied the caller's umask; ours must not apply again.
	if err := syscall.Fchmod(fd, mode&0o7777); err != nil {
		_ = syscall.Close(fd)
		_ = os.Remove(path)
		return nil, nil, 0, errno(err)
	}
	ino := n.pfs.newInode(false)
	n.pfs.link(n.rec, name, ino)
	n.rec.changes = append(n.rec.changes, dirChange{{name: name, ino: ino}})
	h := &handle{pfs: n.pfs, fd: fd, rec: ino}
	if e := n.stat(ino, h, &out.Attr); e != 0 {
		return nil, nil, 0, e
	}
	return n.child(ctx, ino), h, 0, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if e := n.lock(); e != 0 {
		return nil, 0, e
	}
	defer n.unlock()
	if n.rec.dir {
		return nil, 0, syscall.EISDIR
	}
	h, e := n.openFile(n.rec, flags)
	return h, 0, e
}

// openFile opens the backing file of ino for a handle, and truncates it
// (recorded) when flags ask for it.
func (n *node) openFile(ino *inode, flags uint32) (*handle, syscall.Errno) {
	path := n.pfs.location(ino)
	// Read-write whatever the caller asked: undo records need the old
	// bytes. The kernel checks the caller's access mode itself.
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, errno(err)
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := recordTruncate(ino, fd, path, 0); err != nil {
			_ = syscall.Close(fd)
			return nil, errno(err)
		}
	}
	return &handle{pfs: n.pfs, fd: fd, rec: ino}, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.lock(); e != 0 {
		return nil, e
	}
	defer n.unlock()
	if n.reserved(n.rec, name) {
		return nil, syscall.EPERM
	}
	if n.rec.children[name] != nil {
		return nil, syscall.EEXIST
	}
	path := filepath.Join(n.pfs.location(n.rec), name)
	if err := syscall.Mkdir(path, mode&0o7777); err != nil {
		return nil, errno(err)
	}
	if err := syscall.Chmod(path, mode&0o7777); err != nil {
		_ = syscall.Rmdir(path)
		return nil, errno(err)
	}
	ino := n.pfs.newInode(true)
	n.pfs.link(n.rec, name, ino)
	n.rec.changes = append(n.rec.changes, dirChange{{name: name, ino: ino}})
	if e := n.stat(ino, nil, &out.Attr); e != 0 {
		return nil, e
	}
	return n.child(ctx, ino), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	ino := n.rec.children[name]
	switch {
	case ino == nil:
		return syscall.ENOENT
	case ino.dir:
		return syscall.EISDIR
	}
	if err := n.pfs.trash(ino); err != nil {
		return errno(err)
	}
	n.pfs.unlink(n.rec, name)
	n.rec.changes = append(n.rec.changes, dirChange{{name: name}})
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	ino := n.rec.children[name]
	switch {
	case ino == nil:
		return syscall.ENOENT
	case !ino.dir:
		return syscall.ENOTDIR
	case len(ino.children) > 0:
		return syscall.ENOTEMPTY
	}
	// A cut that brings the directory back rebuilds it from its durable
	// entries; its backing directory is not needed for that.
	if err := syscall.Rmdir(n.pfs.location(ino)); err != nil {
		return errno(err)
	}
	n.pfs.unlink(n.rec, name)
	n.rec.changes = append(n.rec.changes, dirChange{{name: name}})
	return 0
}

func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if e := n.lock(); e != 0 {
		return e
	}
	defer n.unlock()
	if n.rec.dir {
		n.rec.syncDir()
	} else {
		n.rec.ops = nil
	}
	return 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.pfs.backing, &st); err != nil {
		return errno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

// Allocate refuses fallocate: its effect on the size is not modelled.
func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	return syscall.EOPNOTSUPP
}

// trash moves the backing file of a file that loses its last name into
// the trash, where a cut can find it again.
func (p *FS) trash(ino *inode) error {
	from := p.location(ino)
	parent := ino.parent
	ino.parent = nil
	to := p.location(ino)
	ino.parent = parent
	return os.Rename(from, to)
}
