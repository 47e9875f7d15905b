package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/wal"
)

// checkCommand is `aggregator check`: read-only, it checks the log's
// records (wal.Check), the index (dedup.CheckIndex: its pages, bbolt's
// check, the format's invariants) and what binds them: the index's
// checkpoint within the log.
type checkCommand struct {
	commandBase
}

const checkUsage = `Checks a data directory without changing it: every record of the log
(checksum, offset, segments in sequence), the index file (its pages, bbolt's
consistency check, and the index's invariants: counters, dense seqs, the
per-topic indexes, the seen set), and the index's checkpoint against the log.
Prints what it found and where. Exit status 0: no damage (a torn tail of the
log, which the next start cuts, is not damage); 1: damage found; 2: the
directory is missing or a server holds it.`

// finding is one problem of the data directory.
type finding struct{ where, what string }

func (c *checkCommand) Run(_ context.Context, args []string) error {
	fs := c.flags("check", checkUsage)
	if err := parse(fs, args); err != nil {
		return err
	}
	if _, err := os.Stat(c.dataDir); err != nil {
		return &notRunError{err}
	}
	var findings []finding
	logRep, logFindings, err := c.checkLog()
	if err != nil {
		return err
	}
	findings = append(findings, logFindings...)
	idx, idxFindings, err := c.checkIndex(logRep)
	if err != nil {
		return err
	}
	findings = append(findings, idxFindings...)
	if idx != nil && logRep != nil {
		findings = append(findings, crossCheck(idx, logRep)...)
	}
	return c.report(logRep, idx, findings)
}

// checkLog checks wal/.
func (c *checkCommand) checkLog() (*wal.Report, []finding, error) {
	dir := filepath.Join(c.dataDir, "wal")
	rep, err := wal.Check(dir)
	switch {
	case errors.Is(err, wal.ErrLocked):
		return nil, nil, &notRunError{fmt.Errorf("data directory %s is in use by a running aggregator: stop it first", c.dataDir)}
	case errors.Is(err, fs.ErrNotExist):
		return nil, []finding{{"wal/", "missing: the log is gone"}}, nil
	case err != nil:
		return nil, nil, err
	}
	var out []finding
	for _, d := range rep.Damage {
		where := "wal/" + d.Segment
		if d.Pos >= 0 {
			where += fmt.Sprintf(" byte %d", d.Pos)
		}
		out = append(out, finding{where, fmt.Sprintf("offset %d: %v", d.Offset, d.Err)})
	}
	return &rep, out, nil
}

// checkIndex checks index.db.
func (c *checkCommand) checkIndex(logRep *wal.Report) (*dedup.IndexReport, []finding, error) {
	path := filepath.Join(c.dataDir, "index.db")
	rep, err := dedup.CheckIndex(path, 0)
	switch {
	case errors.Is(err, dedup.ErrLocked):
		return nil, nil, &notRunError{fmt.Errorf("index %s is in use by a running aggregator: stop it first", path)}
	case errors.Is(err, fs.ErrNotExist):
		if logRep != nil && logRep.FirstOffset <= 1 {
			fmt.Fprintf(c.stdout, "index.db: missing; the log starts at offset 1, so a start rebuilds it (or: aggregator rebuild-index)\n")
			return nil, nil, nil
		}
		return nil, []finding{{"index.db", "missing, and the log no longer holds every record: restore it from a backup"}}, nil
	case err != nil:
		return nil, nil, err
	case rep.Format == 2:
		fmt.Fprintf(c.stdout, "index.db: format 2 (the previous release), not checked: run aggregator upgrade-index first\n")
		return nil, nil, nil
	}
	out := make([]finding, 0, len(rep.Findings))
	for _, f := range rep.Findings {
		out = append(out, finding{"index.db " + f.Where, f.What})
	}
	if rep.More > 0 {
		out = append(out, finding{"index.db", fmt.Sprintf("and %d more problems", rep.More)})
	}
	return rep, out, nil
}

// crossCheck checks the index's checkpoint against the log: the log must
// continue right after it.
func crossCheck(idx *dedup.IndexReport, log *wal.Report) []finding {
	var out []finding
	cp := idx.Checkpoint
	if cp > log.LastOffset {
		out = append(out, finding{"index.db checkpoint", fmt.Sprintf("%d is ahead of the log's last offset %d: "+
			"the log lost acknowledged records (a start refuses; --wal-repair fills the gap)", cp, log.LastOffset)})
	}
	if cp+1 < log.FirstOffset {
		out = append(out, finding{"index.db checkpoint", fmt.Sprintf("%d is behind the log's first offset %d: "+
			"records %d to %d are in neither (index.db replaced by an older copy?)", cp, log.FirstOffset, cp+1, log.FirstOffset-1)})
	}
	return out
}

// report prints the summary and the findings; errDamage when there are.
func (c *checkCommand) report(log *wal.Report, idx *dedup.IndexReport, findings []finding) error {
	w := c.stdout
	if log != nil {
		fmt.Fprintf(w, "log: %d segments, %d bytes, offsets %d to %d\n", log.Segments, log.Bytes, log.FirstOffset, log.LastOffset)
		if t := log.TornTail; t != nil {
			fmt.Fprintf(w, "log: torn tail in %s at byte %d (offset %d: %v): not acknowledged; the next start cuts it\n",
				t.Segment, t.Pos, t.Offset, t.Err)
		}
	}
	if idx != nil {
		fmt.Fprintf(w, "index: format %d, checkpoint %d, unique %d (stored %d, expired %d), duplicates %d, malformed %d, "+
			"%d topics, %d keys in %d runs (forgotten %d)\n", idx.Format, idx.Checkpoint, idx.Unique, idx.Stored,
			idx.Expired, idx.Duplicates, idx.Malformed, idx.Topics, idx.Keys, idx.Runs, idx.Forgotten)
	}
	if len(findings) == 0 {
		fmt.Fprintln(w, "no damage found")
		return nil
	}
	fmt.Fprintf(w, "DAMAGE: %d problems\n", len(findings))
	for _, f := range findings {
		fmt.Fprintf(w, "  %s: %s\n", f.where, f.what)
	}
	fmt.Fprintln(w, "see docs/operations.md, \"When check reports damage\"")
	return errDamage
}
