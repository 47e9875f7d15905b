package powerfs

import (
	"errors"
	"fmt"
	"log"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

var (
	// ErrUnavailable is returned by Available and Mount when this machine
	// cannot mount a FUSE file system (no /dev/fuse, or mount(2) is not
	// permitted).
	ErrUnavailable = errors.New("powerfs: FUSE mounting is unavailable")
	// ErrCut is returned by Cut when the power was already cut.
	ErrCut = errors.New("powerfs: power already cut")
	// ErrUnmounted is returned by Cut after Unmount.
	ErrUnmounted = errors.New("powerfs: unmounted")
)

// reservedName is the directory at the root of the backing directory that
// holds the trash (removed files a cut may bring back) and the staging area
// of a cut. It is invisible on the mount and cannot be created there.
const (
	reservedName = ".powerfs"
	trashDir     = "trash"
	maxDepth     = 64 // directory levels a backing tree may have
)

// Options configures Mount. A nil *Options means the zero Options.
type Options struct {
	// Debug logs every FUSE request and reply to Logger.
	Debug bool
	// Logger receives go-fuse's messages; nil means the log package's
	// default logger.
	Logger *log.Logger
}

// FS is a mounted power-loss file system. Its methods are safe for
// concurrent use.
type FS struct {
	backing string
	mnt     string
	server  *fuse.Server

	frozen atomic.Bool // set by Cut: every operation fails with EIO

	mu        sync.Mutex
	root      *inode
	inodes    map[uint64]*inode
	nextID    uint64
	cut       bool
	unmounted bool
}

// Mount mounts a powerfs at mountpoint over the backing directory, which
// must exist; everything in it is taken as durable. The caller owns the
// mount: Unmount it, also after a Cut.
func Mount(backing, mountpoint string, opts *Options) (*FS, error) {
	if opts == nil {
		opts = &Options{}
	}
	var err error
	p := &FS{inodes: make(map[uint64]*inode)}
	if p.backing, err = filepath.Abs(backing); err != nil {
		return nil, fmt.Errorf("powerfs: %w", err)
	}
	if p.mnt, err = filepath.Abs(mountpoint); err != nil {
		return nil, fmt.Errorf("powerfs: %w", err)
	}
	if err := p.load(); err != nil {
		return nil, fmt.Errorf("powerfs: load %s: %w", p.backing, err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	second := time.Second
	fo := &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			FsName:            "powerfs",
			Name:              "powerfs",
			DisableXAttrs:     true,
			// The kernel would read and write a passthrough file without
			// asking, and nothing would be recorded.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			Debug:                opts.Debug,
			Logger:               opts.Logger,
		},
		EntryTimeout:   &second,
		AttrTimeout:    &second,
		RootStableAttr: &fs.StableAttr{Ino: p.root.id},
	}
	p.server, err = fs.Mount(p.mnt, &node{pfs: p, rec: p.root}, fo)
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENODEV) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("powerfs: mount %s: %w", p.mnt, err)
	}
	return p, nil
}

// Unmount unmounts the file system and waits for its server to stop. Without
// a Cut before it, it is a clean shutdown: the backing directory keeps the
// current state, and removed files are deleted from the trash. The mount must
// not be in use. Calling Unmount again returns nil.
func (p *FS) Unmount() error {
	p.mu.Lock()
	if p.unmounted {
		p.mu.Unlock()
		return nil
	}
	p.unmounted = true
	wasCut := p.cut
	p.mu.Unlock()
	if err := p.unmountServer(); err != nil {
		// Busy (a file still open, a process inside): detach it lazily,
		// so that no mount is left behind; the server stops once the last
		// file on it is closed.
		if derr := syscall.Unmount(p.mnt, syscall.MNT_DETACH); derr != nil {
			err = errors.Join(err, fmt.Errorf("lazy unmount: %w", derr))
		}
		return fmt.Errorf("powerfs: unmount %s: %w", p.mnt, err)
	}
	if !wasCut {
		if err := os.RemoveAll(filepath.Join(p.backing, reservedName)); err != nil {
			return fmt.Errorf("powerfs: remove trash: %w", err)
		}
	}
	return nil
}

// unmountBusyWait bounds how long Unmount waits for a busy mount: the files
// of a process that just exited may be released a moment later.
const unmountBusyWait = 10 * time.Second

// unmountServer unmounts, retrying while the mount is busy.
func (p *FS) unmountServer() error {
	deadline := time.Now().Add(unmountBusyWait)
	for {
		err := p.server.Unmount() // retries a few times itself
		if err == nil || !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Unsynced counts what a cut would drop now.
type Unsynced struct {
	Files   int   // files with unsynced data operations
	DataOps int   // their unsynced writes and truncates
	Bytes   int64 // bytes of those writes
	Dirs    int   // directories with unsynced entry changes
	Changes int   // their unsynced entry changes
}

// Unsynced reports the operations not yet made durable by an fsync.
func (p *FS) Unsynced() Unsynced {
	p.mu.Lock()
	defer p.mu.Unlock()
	var u Unsynced
	for _, ino := range p.inodes {
		if len(ino.ops) > 0 {
			u.Files++
			u.DataOps += len(ino.ops)
			for _, op := range ino.ops {
				u.Bytes += op.n
			}
		}
		if len(ino.changes) > 0 {
			u.Dirs++
			u.Changes += len(ino.changes)
		}
	}
	return u
}

// load builds the inodes of the backing directory, all durable, after
// removing what an earlier mount left in the reserved directory.
func (p *FS) load() error {
	fi, err := os.Stat(p.backing)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("not a directory")
	}
	reserved := filepath.Join(p.backing, reservedName)
	if err := os.RemoveAll(reserved); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(reserved, trashDir), 0o700); err != nil {
		return err
	}
	p.root = p.newInode(true)
	return p.loadDir(p.root, p.backing, 0)
}

// loadDir adds the entries of the backing directory path to dir.
func (p *FS) loadDir(dir *inode, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: more than %d directory levels", path, maxDepth)
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if dir == p.root && e.Name() == reservedName {
			continue
		}
		child := filepath.Join(path, e.Name())
		var ino *inode
		switch {
		case e.IsDir():
			ino = p.newInode(true)
			if err := p.loadDir(ino, child, depth+1); err != nil {
				return err
			}
		case e.Type().IsRegular():
			var st syscall.Stat_t
			if err := syscall.Lstat(child, &st); err != nil {
				return fmt.Errorf("lstat: %w", err)
			}
			if st.Nlink != 1 {
				return fmt.Errorf("%s has %d links: hard links are not supported", child, st.Nlink)
			}
			ino = p.newInode(false)
		default:
			return fmt.Errorf("%s: only regular files and directories are supported", child)
		}
		p.link(dir, e.Name(), ino)
	}
	dir.durable = maps.Clone(dir.children)
	return nil
}

// Available reports whether a powerfs can be mounted here, by mounting one
// on a temporary directory: nil, or an error wrapping ErrUnavailable when
// FUSE is missing or mounting is not permitted (any other error means a
// broken setup).
func Available() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	tmp, err := os.MkdirTemp("", "powerfs-probe-")
	if err != nil {
		return fmt.Errorf("powerfs: probe: %w", err)
	}
	defer os.RemoveAll(tmp)
	backing, mnt := filepath.Join(tmp, "backing"), filepath.Join(tmp, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("powerfs: probe: %w", err)
		}
	}
	fsys, err := Mount(backing, mnt, nil)
	if err != nil {
		return err
	}
	return fsys.Unmount()
}

// errno converts an error of a backing operation to the errno to answer.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
