package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/aggregator-dev/aggregator/dedup"
)

// damagedIndexHint says what to do about a damaged index.db.
const damagedIndexHint = "move index.db aside and restore a backup (aggregator restore), or, when the log " +
	"starts at offset 1, rebuild it from the log (aggregator rebuild-index); aggregator check says what is " +
	"damaged; see docs/operations.md"

// checkIndexFile checks <data-dir>/index.db before the server listens
// (dedup.CheckFile), since the index is opened in the background after
// that: bbolt would panic or crash on a damaged file with publishers
// already connected. Run it while the data directory's lock is held.
func (s *Server) checkIndexFile() error {
	path := filepath.Join(s.cfg.DataDir, "index.db")
	err := dedup.CheckFile(path)
	if errors.Is(err, dedup.ErrDamaged) {
		return fmt.Errorf("%w; refusing to start: %s", err, damagedIndexHint)
	}
	if err != nil {
		return fmt.Errorf("check index %s: %w", path, err)
	}
	return nil
}

// openStore is dedup.Open with bbolt's panics, and faults on its memory
// map, turned into an error: damage deeper in the file than
// dedup.CheckFile looks may still make bbolt panic while Open reads it.
// debug.SetPanicOnFault makes a SIGSEGV or SIGBUS on the map a panic, in
// this goroutine only; faults in other goroutines (the consumer, readers)
// later still crash the process.
func openStore(path string, opts *dedup.Options) (st *dedup.Store, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			msg := strings.ReplaceAll(fmt.Sprint(r), "\n", " ")
			if f, ok := r.(interface{ Addr() uintptr }); ok {
				msg = fmt.Sprintf("memory fault at %#x in its map (cut short, or damaged)", f.Addr())
			}
			err = fmt.Errorf("%w: index file %s: bbolt failed reading it: %s; %s",
				dedup.ErrDamaged, path, msg, damagedIndexHint)
		}
	}()
	return dedup.Open(path, opts)
}
