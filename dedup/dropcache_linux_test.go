package dedup

import (
	"os"
	"syscall"
)

// dropFileCache asks the kernel to evict path's pages from the page cache
// (POSIX_FADV_DONTNEED), so the next Open reads from disk.
func dropFileCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const fadvDontNeed = 4
	if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
