//go:build !unix

package dedup

import "os"

// lockShared does nothing where bbolt's lock is not a flock.
func lockShared(*os.File) (busy bool, err error) { return false, nil }
