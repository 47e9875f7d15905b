package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/wal"
)

// rebuildCommand is `aggregator rebuild-index`: a new index.db from the
// log, applied through dedup.Apply as the consumer applies it, so the seqs
// come out the same. It needs the whole log, from offset 1: kept with
// --wal-retain-bytes -1 from the start.
type rebuildCommand struct {
	commandBase
}

const rebuildUsage = `Rebuilds index.db from the log, offline, when the log starts at offset 1
(run the server with --wal-retain-bytes -1 to keep it so). Every record is
applied as the consumer applies it, so events, seqs and counters come out as
they were; the named cursors and the topics' retention are copied from the
old index when it can still be read. Apply times (for --retain-age) become
the time of the rebuild, and nothing is expired: the server's retention
does that after the start. The new index is written next to the old one,
checked, and swapped in atomically; the old one is kept as
index.db.before-rebuild.<time>.`

func (c *rebuildCommand) Run(ctx context.Context, args []string) error {
	if err := parse(c.flags("rebuild-index", rebuildUsage), args); err != nil {
		return err
	}
	l, err := openLogOffline(c.dataDir)
	if err != nil {
		return err
	}
	d := &heldDir{path: c.dataDir, lock: l}
	defer d.close()
	if first := l.FirstOffset(); first != 1 {
		return fmt.Errorf("rebuild-index: the log starts at offset %d: records 1 to %d were freed once applied, "+
			"so the index cannot be rebuilt from it (restore a backup instead; --wal-retain-bytes -1 keeps the "+
			"whole log from now on); nothing changed", first, first-1)
	}
	tmp, err := d.tempIndex("rebuild")
	if err != nil {
		return fmt.Errorf("rebuild-index: %w", err)
	}
	st, err := c.rebuild(ctx, l, tmp)
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rebuild-index: %w; nothing changed", err)
	}
	kept, err := d.swapIn(tmp, "before-rebuild")
	if err != nil {
		return fmt.Errorf("rebuild-index: %w", err)
	}
	fmt.Fprintf(c.stdout, "rebuilt %s from offsets 1 to %d: %d unique events, %d duplicates, %d malformed, %d topics\n",
		d.index(), st.Checkpoint, st.Unique, st.Duplicates, st.Malformed, st.TopicCount)
	if kept != "" {
		fmt.Fprintf(c.stdout, "the old index is kept as %s\n", kept)
	}
	return nil
}

// openLogOffline opens the data directory's log for an offline tool (it
// takes the directory's lock, verifies every record and cuts a torn tail
// as a start would).
func openLogOffline(dataDir string) (*wal.Log, error) {
	dir := filepath.Join(dataDir, "wal")
	if _, err := os.Stat(dir); err != nil {
		return nil, &notRunError{fmt.Errorf("%s is not a data directory: %w", dataDir, err)}
	}
	l, err := wal.Open(dir, &wal.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	var ce *wal.CorruptionError
	switch {
	case errors.Is(err, wal.ErrLocked):
		return nil, &notRunError{fmt.Errorf("data directory %s is in use by a running aggregator: stop it first", dataDir)}
	case errors.As(err, &ce):
		return nil, fmt.Errorf("the log is damaged (%w): run aggregator check", err)
	case err != nil:
		return nil, err
	}
	return l, nil
}

// rebuild applies the whole log to a new index at path and checks it.
func (c *rebuildCommand) rebuild(ctx context.Context, l *wal.Log, path string) (dedup.Stats, error) {
	last := l.LastOffset()
	s, err := dedup.Open(path, &dedup.Options{ExpectedKeys: uint(max(last, 1))})
	if err != nil {
		return dedup.Stats{}, err
	}
	defer s.Close()
	for from := uint64(1); from <= last; {
		if err := ctx.Err(); err != nil {
			return dedup.Stats{}, err
		}
		entries := make([]dedup.Entry, 0, dedup.DefaultChunkEntries)
		err := l.Read(from, dedup.DefaultChunkEntries, func(off uint64, data []byte) error {
			ev, err := event.Decode(data)
			if err != nil {
				ev = event.Event{} // counted as malformed, as the consumer does
			}
			entries = append(entries, dedup.Entry{Offset: off, Event: ev})
			return nil
		})
		if err != nil {
			return dedup.Stats{}, fmt.Errorf("read the log at %d: %w", from, err)
		}
		if _, err := s.Apply(entries); err != nil {
			return dedup.Stats{}, err
		}
		from += uint64(len(entries))
	}
	c.copySettings(s)
	st, err := s.Stats()
	if err != nil {
		return st, err
	}
	if err := s.Close(); err != nil {
		return st, err
	}
	rep, err := dedup.CheckIndex(path, 0)
	if err == nil && !rep.Clean() {
		err = fmt.Errorf("the rebuilt index fails its check: %v", rep.Findings)
	}
	return st, err
}

// copySettings carries the cursors and retention overrides of the old
// index over, when it can be read; it says what it did.
func (c *rebuildCommand) copySettings(s *dedup.Store) {
	old := filepath.Join(c.dataDir, "index.db")
	if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
		return
	}
	cursors, overrides, err := s.CopySettings(old)
	if err != nil {
		fmt.Fprintf(c.stderr, "aggregator rebuild-index: the named cursors and topic retention of the old index "+
			"are not carried over: %v\n", err)
		return
	}
	fmt.Fprintf(c.stdout, "carried over from the old index: %d named cursors, %d topic retention settings\n", cursors, overrides)
}
