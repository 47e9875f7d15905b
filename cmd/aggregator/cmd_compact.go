package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aggregator-dev/aggregator/dedup"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// compactCommand is `aggregator compact`: bbolt reuses freed pages but
// never gives them back, so after expiry (or a dedup window) the file
// keeps its size; this writes a copy without the free pages
// (bbolt.Compact) and swaps it in atomically.
type compactCommand struct {
	commandBase
}

const compactUsage = `Rewrites index.db without its free pages, offline: a copy is written next to
it (index.db.compact; it needs room for the compacted size), checked, fsynced
and renamed over index.db, then the directory is fsynced. Refuses a data
directory that a server holds, and a damaged index (run check).`

// compactTxBytes bounds the bytes bbolt.Compact copies per transaction of
// the new file.
const compactTxBytes = 64 << 20

func (c *compactCommand) Run(_ context.Context, args []string) error {
	if err := parse(c.flags("compact", compactUsage), args); err != nil {
		return err
	}
	d, err := holdDataDir(c.dataDir)
	if err != nil {
		return err
	}
	defer d.close()
	before, err := os.Stat(d.index())
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := dedup.CheckFile(d.index()); err != nil {
		return fmt.Errorf("compact: %w; nothing changed (run aggregator check)", err)
	}
	tmp, err := d.tempIndex("compact")
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := compactFile(d.index(), tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("compact: %w; nothing changed", err)
	}
	rep, err := dedup.CheckIndex(tmp, 0)
	if err == nil && !rep.Clean() {
		err = fmt.Errorf("the compacted copy fails its check: %v", rep.Findings)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("compact: %w; nothing changed", err)
	}
	if _, err := d.swapIn(tmp, ""); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	after, err := os.Stat(d.index())
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	fmt.Fprintf(c.stdout, "compacted %s: %d bytes -> %d bytes (%d events stored)\n", d.index(), before.Size(), after.Size(), rep.Stored)
	return nil
}

// compactFile writes a compacted copy of the bbolt file src to dst.
func compactFile(src, dst string) error {
	from, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true, Timeout: dedup.DefaultLockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return &notRunError{fmt.Errorf("index %s is in use by another process", src)}
	}
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := bolt.Open(dst, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		return err
	}
	err = bolt.Compact(to, from, compactTxBytes)
	var used int64
	if err == nil {
		err = to.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	}
	if err = errors.Join(err, to.Close()); err != nil {
		return err
	}
	// bbolt grows a file ahead of its pages (to its map size, or in 16 MiB
	// steps); the pages past the last one in use are never read: cut them,
	// so that the file's size is what the index takes.
	return os.Truncate(dst, used)
}
