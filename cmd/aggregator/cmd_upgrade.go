package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aggregator-dev/aggregator/dedup"
)

// upgradeCommand is `aggregator upgrade-index`: an index.db of format 2
// (the previous release) converted to this release's format, offline.
type upgradeCommand struct {
	commandBase
}

const upgradeUsage = `Converts an index.db of format 2 (the previous release), which this release
refuses to open, to format 3: every stored event gets a seq, in the order of
its log offset; the counters and the checkpoint are carried over; the apply
times (for --retain-age) become the time of the upgrade. The new index is
written next to the old one, checked, and swapped in atomically; the old one
is kept as index.db.format2.<time>. It needs about 24 bytes of memory per
stored event. An index of the current format is left as it is.`

func (c *upgradeCommand) Run(_ context.Context, args []string) error {
	if err := parse(c.flags("upgrade-index", upgradeUsage), args); err != nil {
		return err
	}
	d, err := holdDataDir(c.dataDir)
	if err != nil {
		return err
	}
	defer d.close()
	tmp, err := d.tempIndex("upgrade")
	if err != nil {
		return fmt.Errorf("upgrade-index: %w", err)
	}
	rep, err := dedup.Upgrade(d.index(), tmp, nil)
	if errors.Is(err, dedup.ErrUpToDate) {
		fmt.Fprintf(c.stdout, "%s is of format %d already: nothing to do\n", d.index(), dedup.FormatVersion)
		return nil
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w; nothing changed", err)
	}
	kept, err := d.swapIn(tmp, "format2")
	if err != nil {
		return fmt.Errorf("upgrade-index: %w", err)
	}
	fmt.Fprintf(c.stdout, "upgraded %s from format %d to %d: %d events (seqs 1 to %d in offset order), %d topics, "+
		"checkpoint %d; the old index is kept as %s\n", d.index(), rep.FromFormat, dedup.FormatVersion, rep.Events,
		rep.Events, rep.Topics, rep.Checkpoint, kept)
	return nil
}
