//go:build unix

package wal

import (
	"os"
	"syscall"
)

// linkCount returns how many directory entries name the open file f: 0
// once it was deleted (its data then goes with the last handle). ok is
// false where the system does not tell.
func linkCount(f *os.File) (n uint64, ok bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false, nil
	}
	return uint64(st.Nlink), true, nil
}
