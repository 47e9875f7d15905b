//go:build powerloss_nofsync

package wal

import "os"

// syncTail does not fsync: a log built with the powerloss_nofsync tag
// acknowledges group commits that are only in the page cache. It exists so
// that the power-loss drill (cmd/loadgen powerloss) can show that it catches
// such a server; never ship a binary built with it.
func syncTail(*os.File) error { return nil }
