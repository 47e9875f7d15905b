package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/wal"
)

// backend adapts the log and the index to api.Backend. The log is there from
// the start; the index and its consumer arrive once the index is open, and
// until then reads answer 503 while publishing already works.
type backend struct {
	log      *wal.Log
	maxLag   uint64
	store    atomic.Pointer[dedup.Store]
	consumer atomic.Pointer[dedup.Consumer]
}

var _ api.Backend = (*backend)(nil)

func newBackend(l *wal.Log, maxLag uint64) *backend {
	return &backend{log: l, maxLag: maxLag}
}

// attach makes the opened index and its started consumer available.
func (b *backend) attach(s *dedup.Store, c *dedup.Consumer) {
	b.store.Store(s)
	b.consumer.Store(c)
}

// errIndexOpening is the reason reads are refused before the index is open.
var errIndexOpening = fmt.Errorf("index is opening: %w", api.ErrUnavailable)

func (b *backend) index() (*dedup.Store, error) {
	s := b.store.Load()
	if s == nil {
		return nil, errIndexOpening
	}
	return s, nil
}

// Publish encodes the events into one buffer, one record each, and appends
// them to the log; it returns once they are fsynced.
func (b *backend) Publish(ctx context.Context, events []event.Event) (uint64, uint64, error) {
	if b.maxLag > 0 {
		if s := b.store.Load(); s != nil {
			if lag := sub(b.log.LastOffset(), s.Checkpoint()); lag > b.maxLag {
				return 0, 0, fmt.Errorf("consumer lag %d is above %d: %w", lag, b.maxLag, api.ErrOverloaded)
			}
		}
	}
	size := 0
	for i := range events {
		size += events[i].EncodedSize()
	}
	buf := make([]byte, 0, size)
	records := make([][]byte, len(events))
	for i := range events {
		start := len(buf)
		buf = events[i].AppendBinary(buf)
		records[i] = buf[start:len(buf):len(buf)]
	}
	first, last, err := b.log.Append(ctx, records)
	if err != nil {
		return 0, 0, fmt.Errorf("append: %w", walError(err))
	}
	return first, last, nil
}

// walError marks the log's refusals as api.ErrUnavailable (503, retry).
func walError(err error) error {
	if errors.Is(err, wal.ErrClosed) || errors.Is(err, wal.ErrUnavailable) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO) {
		return fmt.Errorf("%w: %w", api.ErrUnavailable, err)
	}
	return err
}

// List reads a page from the index.
func (b *backend) List(_ context.Context, q event.ListQuery) (event.Page, error) {
	s, err := b.index()
	if err != nil {
		return event.Page{}, err
	}
	p, err := s.List(q)
	if errors.Is(err, dedup.ErrClosed) {
		return p, fmt.Errorf("list: %w: %w", api.ErrUnavailable, err)
	}
	return p, err
}

// Stats combines the index's counters with the log's offsets. The index is
// read first so that its checkpoint never exceeds the last offset read.
func (b *backend) Stats(context.Context) (api.Stats, error) {
	s, err := b.index()
	if err != nil {
		return api.Stats{}, err
	}
	ds, err := s.Stats()
	if errors.Is(err, dedup.ErrClosed) {
		return api.Stats{}, fmt.Errorf("index stats: %w: %w", api.ErrUnavailable, err)
	}
	if err != nil {
		return api.Stats{}, fmt.Errorf("index stats: %w", err)
	}
	ws := b.log.Stats()
	return api.Stats{
		Received:    ws.LastOffset,
		Unique:      ds.Unique,
		Duplicates:  ds.Duplicates,
		TopicCounts: ds.Topics,
		WAL: api.WALStats{
			FirstOffset: ws.FirstOffset,
			LastOffset:  ws.LastOffset,
			Checkpoint:  ds.Checkpoint,
			Lag:         sub(ws.LastOffset, ds.Checkpoint),
			Segments:    ws.Segments,
			Bytes:       ws.Bytes,
		},
		Dedup: api.DedupStats{
			Keys:            ds.Keys,
			BloomBits:       ds.BloomBits,
			BloomFPEstimate: ds.BloomFPEstimate,
		},
	}, nil
}

// Ready is nil when the log takes appends, the index is open and the
// consumer's last attempt succeeded.
func (b *backend) Ready(context.Context) error {
	if err := b.log.Writable(); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	c := b.consumer.Load()
	if c == nil {
		return errIndexOpening
	}
	if err := c.Err(); err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	return nil
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}
