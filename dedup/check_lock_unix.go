//go:build unix

package dedup

import (
	"errors"
	"os"
	"syscall"
)

// lockShared takes a shared flock on f, bbolt's lock as a reader takes it;
// busy is true when a bbolt writer holds the file. Closing f releases it.
func lockShared(f *os.File) (busy bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	return false, err
}
