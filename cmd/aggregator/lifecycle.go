package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
)

// lifecycleConfig is the data lifecycle part of Config: retention of the
// stored events, the dedup window, and the archive of applied log segments.
type lifecycleConfig struct {
	// RetainAge and RetainEvents are the default retention of every topic
	// (0: no bound); PUT /topics/{topic}/retention overrides them.
	RetainAge    time.Duration
	RetainEvents uint64
	// DedupWindow forgets keys applied longer ago (0: never).
	DedupWindow time.Duration
	// WALRetainBytes and WALRetainAge keep applied log segments as an
	// archive (0 and 0: none; -1 bytes: every segment).
	WALRetainBytes int64
	WALRetainAge   time.Duration
}

// registerLifecycleFlags defines the lifecycle flags on fs.
func registerLifecycleFlags(fs *flag.FlagSet, c *lifecycleConfig) {
	fs.DurationVar(&c.RetainAge, "retain-age", c.RetainAge, "expire stored events applied longer ago, in every topic without a retention of its own (0: no bound)")
	fs.Uint64Var(&c.RetainEvents, "retain-events", c.RetainEvents, "keep the newest N stored events of every topic without a retention of its own (0: no bound)")
	fs.DurationVar(&c.DedupWindow, "dedup-window", c.DedupWindow, "forget deduplication keys applied longer ago, for a bounded index (0: remember every key for good)")
	fs.Int64Var(&c.WALRetainBytes, "wal-retain-bytes", c.WALRetainBytes, "keep applied log segments as an archive up to this many bytes of log (0: free them at once; -1: keep all)")
	fs.DurationVar(&c.WALRetainAge, "wal-retain-age", c.WALRetainAge, "keep applied log segments as an archive until they are this old (0: no age bound)")
}

// validate returns the problems of the lifecycle flags.
func (c *lifecycleConfig) validate() []error {
	var errs []error
	for name, d := range map[string]time.Duration{"retain age": c.RetainAge, "dedup window": c.DedupWindow, "wal retain age": c.WALRetainAge} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %v: must not be negative", name, d))
		}
	}
	if c.WALRetainBytes < -1 {
		errs = append(errs, fmt.Errorf("wal retain bytes %d: want -1 (keep all), 0 (none) or a size", c.WALRetainBytes))
	}
	return errs
}

// retention is the default retention the flags give.
func (c *lifecycleConfig) retention() event.Retention {
	return event.Retention{Age: c.RetainAge, Events: c.RetainEvents}
}

// The admin half of the backend (api.Admin): retention settings and online
// backups, served from the index.
var _ api.Admin = (*backend)(nil)

// TopicRetention returns the retention of a topic.
func (b *backend) TopicRetention(_ context.Context, topic string) (event.TopicRetention, error) {
	s, err := b.index()
	if err != nil {
		return event.TopicRetention{}, err
	}
	tr, err := s.Retention(topic)
	return tr, indexErr("retention", err)
}

// SetTopicRetention gives a topic its own retention.
func (b *backend) SetTopicRetention(_ context.Context, topic string, o event.RetentionOverride) (event.TopicRetention, error) {
	s, err := b.index()
	if err != nil {
		return event.TopicRetention{}, err
	}
	tr, err := s.SetRetention(topic, o)
	return tr, indexErr("set retention", err)
}

// Backup streams a snapshot of the index (dedup.Store.Backup).
func (b *backend) Backup(ctx context.Context, w io.Writer, begin func(api.BackupInfo)) error {
	s, err := b.index()
	if err != nil {
		return err
	}
	// In cluster mode the stream must keep what follows the snapshot until
	// the node restored from it has an entry of its own.
	if p, ok := b.appender.(pinner); ok {
		if _, err := p.Pin(ctx); err != nil {
			return fmt.Errorf("backup: %w: %w", event.ErrUnavailable, err)
		}
	}
	_, err = s.Backup(w, func(h dedup.BackupHeader) error {
		begin(api.BackupInfo{Checkpoint: h.Checkpoint, LastSeq: h.LastSeq, Format: h.Format, Length: h.Length()})
		return nil
	})
	return indexErr("backup", err)
}

// pinner is a log shared by nodes (natslog.Log) that can hold its records
// for a node restored from a backup.
type pinner interface {
	Pin(ctx context.Context) (uint64, error)
}

// formatHint explains a refused index of another format.
func formatHint(err error, dataDir string) error {
	var fe *dedup.FormatError
	if errors.As(err, &fe) && fe.Version == 2 {
		return fmt.Errorf("%w: it was written by the previous release; stop the server and run "+
			"`aggregator upgrade-index --data-dir %s` to convert it (offline, the old file is kept)", err, dataDir)
	}
	return err
}
