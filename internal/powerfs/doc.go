// Package powerfs is a FUSE file system for power-loss tests: a pass-through
// over a backing directory that remembers, for every file and every
// directory, what was changed since its last fsync, and on a power cut
// forgets it.
//
// A kill -9 leaves the page cache intact, so a missing fsync passes every
// crash test that only kills the process. Mounted with powerfs, the program
// under test runs on real files (reads, writes and mmap go to the backing
// directory at once), but Cut rewrites the backing directory to what a
// machine would find after the power came back.
//
// # What survives a cut
//
// A file's data (its bytes and its size) and a directory's entries are made
// durable separately. Between two fsyncs, each file keeps the list of its
// data operations (write, pwrite, truncate, ftruncate, open with O_TRUNC),
// and each directory the list of its entry changes (create, mkdir, unlink,
// rmdir, a rename into, out of or within it), in the order they were made.
//
//   - fsync or fdatasync of a file makes all of that file's data operations
//     durable, bytes and size. Nothing else: not its name, not the entries of
//     the directories above it.
//   - fsync of a directory makes all of its entry changes durable: which
//     names it holds and which file or directory each name refers to. Not the
//     data of those files, nor the entries of its subdirectories.
//   - Cut freezes the file system (every later operation fails with EIO) and
//     rewrites the backing directory. With DropAll, every file holds its data
//     as of its last fsync and every directory its entries as of its last
//     fsync. With Torn, every file and every directory holds that durable
//     state followed by a random prefix of its unsynced operations, in the
//     order they were made, chosen independently for each file and each
//     directory; the last write of a file's kept prefix may itself be kept
//     in part only (its first n bytes, n random): a write torn by the cut.
//     A file or directory that is then reachable from the root under no name
//     is gone, with its data.
//
// This is the strict reading of POSIX, not what ext4 or xfs usually do:
//
//   - A new file whose directory was never fsynced is gone after a cut, even
//     if the file itself was fsynced. (ext4 and xfs usually commit the new
//     entry along with the file's fsync, a side effect of their journals;
//     POSIX does not promise it.) The same holds for a new directory and its
//     parent.
//   - A rename or an unlink whose directory was not fsynced is undone: the old
//     name comes back, with the file's durable data.
//   - Data that no fsync covered is lost, also when the file was closed or
//     renamed over another (ext4's auto_da_alloc would flush it).
//   - A rename within one directory is one change, kept or dropped as a
//     whole. A rename between two directories is two changes, one in each
//     (ext4 and xfs journal it as one): a cut can keep both, or neither (the
//     file is gone), or only the new name's (the file is then under both
//     names, as two separate copies).
//
// Not modelled: any order between different files and directories (each
// keeps its own prefix); a disk that persists the unsynced pages of one file
// out of order (Torn keeps an in-order prefix only); metadata (mode, owner,
// times), which is passed through and never reverted. Hard links, symbolic
// links, special files, fallocate, RENAME_EXCHANGE and extended attributes
// are refused. The backing directory itself is never fsynced: durability is
// modelled here, not asked of the disk below.
//
// # FUSE choices
//
//   - Files are opened without direct_io, so that mmap works through the
//     page cache (bbolt reads its file through a read-only shared mapping);
//     writes go through the page cache to this file system before write(2)
//     returns, so what a process reads back, by read or by mmap, is what it
//     wrote.
//   - Writeback caching and FUSE passthrough are off: every write reaches
//     this file system, and none arrives later from the kernel's writeback.
//     So once a killed process has exited (the kernel lets a task exit only
//     when the FUSE requests it had sent are answered), nothing it did can
//     change the file system any more, and a cut made then sees exactly the
//     durable state of the moment of the kill.
//   - No FUSE lock capability is negotiated, so flock and POSIX locks are
//     handled by the kernel itself: they work between processes of this
//     machine as on a local file system. A lock does not survive a cut.
//   - Mounting uses mount(2) directly (go-fuse's DirectMountStrict), which
//     needs root and /dev/fuse but no fusermount. Available reports whether
//     it works here.
//
// The process that serves the mount must not mmap a file of it: a page
// fault waiting for its own FUSE server can deadlock with the Go runtime's
// stop-the-world. Run such programs in a child process.
//
// # Use
//
//	fsys, err := powerfs.Mount(backing, mnt, nil)
//	// ... run the program under test on mnt, then kill -9 it and wait ...
//	report, err := fsys.Cut(powerfs.Torn, rng)
//	err = fsys.Unmount()
//	fsys, err = powerfs.Mount(backing, mnt, nil) // the durable state only
//
// Everything in the backing directory at Mount is durable. Unmount without
// a Cut is a clean shutdown: the backing directory keeps the current state.
package powerfs
