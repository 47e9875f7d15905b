package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// This file detects that the log's files were removed or replaced while the
// log is open (rm -rf of the data directory, a restore over it). Records
// written to a deleted file are fsynced without error and gone at the next
// start, so they must not be acknowledged, and recreating the directory
// would restart the offsets: the log then refuses appends for good (until
// it is opened again) and says why.
//
// The checks:
//   - after every fsync, the link count of the tail segment's handle (one
//     fstat per group commit): a commit is not acknowledged if its segment
//     has no directory entry left; a commit that created segments also
//     checks that the other segments it wrote into still exist;
//   - every checkInterval, and before TruncateFront removes a segment: the
//     log's directory and every path given to Watch are still the files
//     they were when opened or watched, and the tail segment's path still
//     names the handle the writer writes to.

// checkInterval is how often the writer checks the log's files while it
// runs (see checkFiles).
const checkInterval = time.Second

// watchedFile is a file or directory whose removal or replacement makes the
// log refuse appends.
type watchedFile struct {
	path string
	info os.FileInfo // at Open or Watch
}

// Watch adds path, a file or a directory, to what the log checks besides
// its own directory and its tail segment: every second and before
// TruncateFront removes a segment. Typical paths are the directory above
// the log and the consumer's index file: records are freed from the log
// once the index holds them, so with the index file deleted they would be
// lost. If path is removed or replaced by another file later, Append,
// Writable and TruncateFront return an error wrapping ErrRemoved and
// ErrUnavailable until the log is closed and opened again.
func (l *Log) Watch(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	l.watched = append(l.watched, watchedFile{path: path, info: fi})
	return nil
}

// lostErr returns the error the log refuses everything with once its files
// were removed, nil before.
func (l *Log) lostErr() error {
	if p := l.lost.Load(); p != nil {
		return *p
	}
	return nil
}

// markLost makes the log refuse appends and TruncateFront for good with
// cause (which wraps ErrRemoved); the first call logs it. It returns the
// error the log refuses with.
func (l *Log) markLost(cause error) error {
	err := unavailable(cause)
	if l.lost.CompareAndSwap(nil, &err) {
		l.logger.Error("wal: log files removed or replaced while open; refusing appends until restart, "+
			"nothing is recreated", logKeyErr, cause)
	}
	return l.lostErr()
}

// checkFiles is the writer's periodic check (see the top of this file).
func (l *Log) checkFiles() {
	if l.lostErr() != nil {
		return
	}
	err := l.checkPaths()
	if err == nil && l.app.tail != nil {
		if err = checkLinked(l.app.tail); err == nil {
			err = sameFile(l.app.tail.Name(), l.app.tail)
		}
	}
	if errors.Is(err, ErrRemoved) {
		l.markLost(err)
	}
}

// checkPaths checks the log's directory and the watched paths.
func (l *Log) checkPaths() error {
	if err := samePath(l.dir, l.dirInfo); err != nil {
		return err
	}
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	for _, w := range l.watched {
		if err := samePath(w.path, w.info); err != nil {
			return err
		}
	}
	return nil
}

// checkCommitFiles checks, after the fsync of j, that the segments j wrote
// into are still linked.
func checkCommitFiles(j *job) error {
	if err := checkLinked(j.file); err != nil {
		return err
	}
	for _, path := range j.alsoWrote {
		if _, err := os.Stat(path); isMissing(err) {
			return fmt.Errorf("%w: segment %s was deleted", ErrRemoved, filepath.Base(path))
		}
	}
	return nil
}

// checkLinked returns an error wrapping ErrRemoved when the open segment f
// has no directory entry left. An fstat that fails is an I/O error (it
// fails the commit like a failed fsync).
func checkLinked(f *os.File) error {
	n, ok, err := linkCount(f)
	if err != nil {
		return fmt.Errorf("stat segment: %w", err)
	}
	if ok && n == 0 {
		return fmt.Errorf("%w: segment %s was deleted", ErrRemoved, filepath.Base(f.Name()))
	}
	return nil
}

// samePath returns an error wrapping ErrRemoved when path no longer exists
// or names another file than want. Other errors of stat are not evidence
// of a removal and are ignored.
func samePath(path string, want os.FileInfo) error {
	fi, err := os.Stat(path)
	if isMissing(err) {
		return fmt.Errorf("%w: %s was removed", ErrRemoved, path)
	}
	if err == nil && !os.SameFile(fi, want) {
		return fmt.Errorf("%w: %s was replaced by another file", ErrRemoved, path)
	}
	return nil
}

// sameFile is samePath for the file open as f.
func sameFile(path string, f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	return samePath(path, fi)
}

// isMissing reports whether a stat failed because the path, or a directory
// on it, is gone.
func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
