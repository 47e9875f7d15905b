package natslog

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// checkpointKey is a node's entry in the checkpoint bucket.
func checkpointKey(node string) string { return "node." + node }

// noteApplied records that the index has committed every sequence up to
// seq; the monitor reports it.
func (l *Log) noteApplied(seq uint64) {
	for {
		cur := l.applied.Load()
		if (l.appliedKnown.Load() && seq <= cur) || l.applied.CompareAndSwap(cur, seq) {
			break
		}
	}
	l.appliedKnown.Store(true)
}

// report writes this node's checkpoint to the bucket when it moved.
func (l *Log) report(ctx context.Context) {
	if l.opts.NodeID == "" || !l.appliedKnown.Load() {
		return
	}
	cp := l.applied.Load()
	if l.reportedOnce.Load() && cp == l.reported.Load() {
		return
	}
	if _, err := l.kv.Put(ctx, checkpointKey(l.opts.NodeID), []byte(strconv.FormatUint(cp, 10))); err != nil {
		l.logger.Warn("report checkpoint", "checkpoint", cp, "err", err)
		return
	}
	l.reported.Store(cp)
	l.reportedOnce.Store(true)
}

// retain reports this node's checkpoint and purges the stream below the
// smallest checkpoint in the bucket: no node still needs those records. A
// node purges only once its own checkpoint is in the bucket.
func (l *Log) retain() {
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	l.report(ctx)
	if l.opts.PurgeInterval < 0 || !l.reportedOnce.Load() {
		return
	}
	low, nodes, err := l.minCheckpoint(ctx)
	if err != nil {
		if l.ctx.Err() == nil {
			l.logger.Warn("read checkpoints", "err", err)
		}
		return
	}
	if nodes == 0 || low+1 <= l.first.Load() {
		return
	}
	if err := l.stream.Purge(ctx, jetstream.WithPurgeSequence(low+1)); err != nil {
		if l.ctx.Err() == nil {
			l.logger.Warn("purge stream", "below", low+1, "err", err)
		}
		return
	}
	l.metrics.purgedBelow.Set(float64(low + 1))
	l.first.Store(max(l.first.Load(), low+1))
	l.logger.Debug("stream purged below the smallest checkpoint", "below", low+1, "nodes", nodes)
}

// pinPrefix starts the key of a pin in the checkpoint bucket.
const pinPrefix = "pin."

// Pin holds the stream for a node that will be restored from a backup of
// this node's index taken next: it writes a pin at this node's reported
// checkpoint (at most the checkpoint of any snapshot taken afterwards), and
// no node purges the records above it until the pin is PinTTL old. By then
// the restored node has its own entry. It returns the pinned checkpoint.
func (l *Log) Pin(ctx context.Context) (uint64, error) {
	var cp uint64 // nothing reported or applied yet: the whole stream
	switch {
	case l.reportedOnce.Load():
		cp = l.reported.Load()
	case l.appliedKnown.Load():
		cp = l.applied.Load()
	}
	key := pinPrefix + strconv.FormatInt(time.Now().UnixNano(), 10)
	if _, err := l.kv.Put(ctx, key, []byte(strconv.FormatUint(cp, 10))); err != nil {
		return 0, fmt.Errorf("pin the stream at %d: %w", cp, err)
	}
	l.logger.Info("stream pinned for a restore from a backup", "checkpoint", cp, "pin", key, "ttl", l.opts.PinTTL)
	return cp, nil
}

// minCheckpoint returns the smallest checkpoint in the bucket, pins that
// have not expired included, and the number of entries it took. It deletes
// the expired pins.
func (l *Log) minCheckpoint(ctx context.Context) (low uint64, nodes int, err error) {
	entries, err := l.entries(ctx)
	if err != nil {
		return 0, 0, err
	}
	for key, e := range entries {
		if strings.HasPrefix(key, pinPrefix) && time.Since(e.created) > l.opts.PinTTL {
			if err := l.kv.Delete(ctx, key); err != nil {
				l.logger.Warn("delete an expired pin", "pin", key, "err", err)
			}
			continue
		}
		if nodes == 0 || e.checkpoint < low {
			low = e.checkpoint
		}
		nodes++
	}
	return low, nodes, nil
}

// Checkpoints returns every node's reported checkpoint, and the pins, by
// their key (for tests and operators).
func (l *Log) Checkpoints(ctx context.Context) (map[string]uint64, error) {
	entries, err := l.entries(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(entries))
	for key, e := range entries {
		out[key] = e.checkpoint
	}
	return out, nil
}

// entry is a checkpoint in the bucket and when it was written.
type entry struct {
	checkpoint uint64
	created    time.Time
}

// entries reads the checkpoint bucket.
func (l *Log) entries(ctx context.Context) (map[string]entry, error) {
	w, err := l.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch checkpoints: %w", err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]entry{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				return out, nil
			}
			cp, err := strconv.ParseUint(string(e.Value()), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("checkpoint of %s: %w", e.Key(), err)
			}
			out[e.Key()] = entry{checkpoint: cp, created: e.Created()}
		}
	}
}
