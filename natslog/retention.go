package natslog

import (
	"context"
	"fmt"
	"strconv"
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

// minCheckpoint returns the smallest checkpoint in the bucket and the
// number of nodes there.
func (l *Log) minCheckpoint(ctx context.Context) (low uint64, nodes int, err error) {
	cps, err := l.Checkpoints(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, cp := range cps {
		if nodes == 0 || cp < low {
			low = cp
		}
		nodes++
	}
	return low, nodes, nil
}

// Checkpoints returns every node's reported checkpoint (for tests and
// operators).
func (l *Log) Checkpoints(ctx context.Context) (map[string]uint64, error) {
	w, err := l.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch checkpoints: %w", err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]uint64{}
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
			out[e.Key()] = cp
		}
	}
}
