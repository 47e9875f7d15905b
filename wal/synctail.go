//go:build !powerloss_nofsync

package wal

import "os"

// syncTail fsyncs the tail segment of a group commit, the fsync that every
// acknowledgement waits for. The powerloss_nofsync build tag swaps it for a
// no-op (synctail_nofsync.go).
func syncTail(f *os.File) error { return f.Sync() }
