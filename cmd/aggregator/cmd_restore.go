package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/wal"
)

// restoreCommand is `aggregator restore`: a new data directory from a
// backup stream (GET /admin/backup). The index is the snapshot, checked;
// the log is new and starts right after the snapshot's checkpoint, so no
// offset is ever given twice.
type restoreCommand struct {
	commandBase
	from string
}

const restoreUsage = `Makes a new data directory from a backup taken with GET /admin/backup
(--from FILE, or - for standard input). The stream is checked (its framing
and CRC-32C) and the restored index too (bbolt's consistency check, its
format, its checkpoint) before anything is made final; the log is created
empty, continuing the offsets after the snapshot's checkpoint. --data-dir must
not exist or be empty. Events acknowledged after the backup began are not in
it: they are lost unless the old log still holds them.`

func (c *restoreCommand) Run(_ context.Context, args []string) error {
	fs := c.flags("restore", restoreUsage)
	fs.StringVar(&c.from, "from", "", "the backup file (- for standard input)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.from == "" {
		return &usageError{err: errors.New("--from is required")}
	}
	in, closeIn, err := c.open()
	if err != nil {
		return err
	}
	defer closeIn()
	if err := prepareEmptyDir(c.dataDir); err != nil {
		return err
	}
	tmp := filepath.Join(c.dataDir, "index.db.restore")
	h, err := dedup.RestoreBackup(in, tmp)
	if err != nil {
		return fmt.Errorf("restore: %w; %s left empty", err, c.dataDir)
	}
	if err := wal.Create(filepath.Join(c.dataDir, "wal"), h.Checkpoint+1); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dataDir, "index.db")); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := wal.SyncDir(c.dataDir); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := wal.SyncDir(filepath.Dir(filepath.Clean(c.dataDir))); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(c.stdout, "restored %s: index of %s (format %d) at checkpoint %d, last seq %d, %d unique events "+
		"(%d expired); the log starts at offset %d\n", c.dataDir, h.Created.Format("2006-01-02T15:04:05Z"),
		h.Format, h.Checkpoint, h.LastSeq, h.Unique, h.Expired, h.Checkpoint+1)
	return nil
}

// open opens the backup stream.
func (c *restoreCommand) open() (io.Reader, func(), error) {
	if c.from == "-" {
		return os.Stdin, func() {}, nil
	}
	f, err := os.Open(c.from)
	if err != nil {
		return nil, nil, &notRunError{err}
	}
	return f, func() { f.Close() }, nil
}

// prepareEmptyDir creates dir (0700) or accepts an empty one.
func prepareEmptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		return nil
	case err != nil:
		return &notRunError{err}
	case len(ents) > 0:
		return &notRunError{fmt.Errorf("%s is not empty: restore makes a new data directory (move the old one aside)", dir)}
	}
	return nil
}
