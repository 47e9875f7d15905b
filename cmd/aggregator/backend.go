package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/wal"
)

// Appender is the log the publish path appends to and reports on: the local
// write-ahead log (*wal.Log) or, in cluster mode, a replicated stream. The
// consumer reads the same log through dedup.Source.
type Appender interface {
	// Append makes records durable as consecutive offsets and returns the
	// first and the last; see wal.Log.Append for the contract.
	Append(ctx context.Context, records [][]byte) (first, last uint64, err error)
	// Writable returns nil when the log accepts appends, else the reason.
	Writable() error
	// LastOffset returns the offset of the last acknowledged record.
	LastOffset() uint64
	// Stats returns the log's offsets and size.
	Stats() wal.Stats
}

var _ Appender = (*wal.Log)(nil)

// backend adapts the log and the index to api.Backend. The log is there from
// the start; the index and its consumer arrive once the index is open, and
// until then reads answer 503 while publishing already works.
type backend struct {
	appender Appender
	limits   limits
	store    atomic.Pointer[dedup.Store]
	consumer atomic.Pointer[dedup.Consumer]

	// Admitted publishes not yet answered by the log: counted on top of the
	// log's own figures, so that concurrent publishers cannot all pass a
	// bound at once. The lag or the size passes a bound by at most the one
	// request admitted last.
	mu            sync.Mutex
	pendingEvents uint64
	pendingBytes  int64

	topics *topicGate // nil: no bound on the topics
}

// limits are the bounds of the backend; zero means no bound (or, for
// maxCursors, the index's default).
type limits struct {
	maxLag     uint64 // events the consumer may be behind the log
	maxBytes   int64  // bytes of the log's segment files
	maxTopics  int    // topics (publishing an event of a new topic past it: 429)
	maxCursors int    // named cursors
}

var _ api.Backend = (*backend)(nil)

func newBackend(l Appender, lim limits) *backend {
	b := &backend{appender: l, limits: lim}
	if lim.maxTopics > 0 {
		b.topics = &topicGate{max: lim.maxTopics, known: map[string]struct{}{}}
	}
	return b
}

// attach makes the opened index and its started consumer available.
func (b *backend) attach(s *dedup.Store, c *dedup.Consumer) {
	b.store.Store(s)
	b.consumer.Store(c)
}

// errIndexOpening is the reason reads are refused before the index is open.
var errIndexOpening = fmt.Errorf("index is opening: %w", event.ErrUnavailable)

func (b *backend) index() (*dedup.Store, error) {
	s := b.store.Load()
	if s == nil {
		return nil, errIndexOpening
	}
	return s, nil
}

// Publish encodes the events into one buffer, one record each, and appends
// them to the log; it returns once they are fsynced. Over a bound it writes
// nothing and returns an error wrapping event.ErrOverloaded (429).
func (b *backend) Publish(ctx context.Context, events []event.Event) (uint64, uint64, error) {
	size := 0
	for i := range events {
		size += events[i].EncodedSize()
	}
	n, bytes := uint64(len(events)), int64(size+len(events)*wal.RecordOverhead)
	if err := b.admit(n, bytes); err != nil {
		return 0, 0, err
	}
	defer b.unreserve(n, bytes)
	if b.topics != nil {
		if err := b.topics.admit(events, b.store.Load()); err != nil {
			return 0, 0, err
		}
	}
	buf := make([]byte, 0, size)
	records := make([][]byte, len(events))
	for i := range events {
		start := len(buf)
		buf = events[i].AppendBinary(buf)
		records[i] = buf[start:len(buf):len(buf)]
	}
	first, last, err := b.appender.Append(ctx, records)
	if err != nil {
		return 0, 0, fmt.Errorf("append: %w", walError(err))
	}
	return first, last, nil
}

// admit checks the bounds, counting the publishes admitted before and not
// yet answered, and reserves room for this one.
func (b *backend) admit(n uint64, bytes int64) error {
	if b.limits.maxLag == 0 && b.limits.maxBytes == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limits.maxLag > 0 {
		// Before the index is open the checkpoint is unknown: no bound yet.
		if s := b.store.Load(); s != nil {
			if lag := behind(b.appender.LastOffset(), s.Checkpoint()) + b.pendingEvents; lag > b.limits.maxLag {
				return fmt.Errorf("consumer lag %d is above %d: %w", lag, b.limits.maxLag, event.ErrOverloaded)
			}
		}
	}
	if b.limits.maxBytes > 0 {
		// Segments kept as an archive (--wal-retain-*) are not a backlog.
		st := b.appender.Stats()
		if size := st.Bytes - st.Archived + b.pendingBytes; size > b.limits.maxBytes {
			return fmt.Errorf("log holds %d bytes, above %d: %w", size, b.limits.maxBytes, event.ErrOverloaded)
		}
	}
	b.pendingEvents += n
	b.pendingBytes += bytes
	return nil
}

// unreserve releases what admit reserved.
func (b *backend) unreserve(n uint64, bytes int64) {
	if b.limits.maxLag == 0 && b.limits.maxBytes == 0 {
		return
	}
	b.mu.Lock()
	b.pendingEvents -= n
	b.pendingBytes -= bytes
	b.mu.Unlock()
}

// walError marks the log's refusals as unavailable (503, retry). The
// client sees what went wrong but not the I/O error itself, which names
// files of the data directory: that stays the cause, for the logs.
func walError(err error) error {
	if errors.Is(err, wal.ErrClosed) || errors.Is(err, wal.ErrUnavailable) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO) {
		return &event.Error{Kind: event.Unavailable, Message: "log cannot write: " + ioReason(err), Err: err}
	}
	return err
}

// ioReason says in words without paths why the log refused: its files were
// removed or replaced, the errno's text ("no space left on device"),
// shutting down, or an I/O error.
func ioReason(err error) string {
	var errno syscall.Errno
	switch {
	case errors.Is(err, wal.ErrClosed):
		return "shutting down"
	case errors.Is(err, wal.ErrRemoved):
		return "its files were removed or replaced while running; restart the server"
	case errors.As(err, &errno):
		return errno.Error()
	default:
		return "I/O error"
	}
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
		return api.Stats{}, fmt.Errorf("index stats: %w: %w", event.ErrUnavailable, err)
	}
	if err != nil {
		return api.Stats{}, fmt.Errorf("index stats: %w", err)
	}
	ws := b.appender.Stats()
	return api.Stats{
		Received:   ws.LastOffset,
		Unique:     ds.Unique,
		Duplicates: ds.Duplicates,
		Expired:    ds.Expired,
		Stored:     ds.Stored,
		FirstSeq:   ds.FirstSeq,
		LastSeq:    ds.LastSeq,
		TopicCount: ds.TopicCount,
		WAL: api.WALStats{
			FirstOffset: ws.FirstOffset,
			LastOffset:  ws.LastOffset,
			Checkpoint:  ds.Checkpoint,
			Lag:         behind(ws.LastOffset, ds.Checkpoint),
			Segments:    ws.Segments,
			Bytes:       ws.Bytes,
		},
		Dedup: api.DedupStats{
			Keys:            ds.Keys,
			Forgotten:       ds.Forgotten,
			BloomBits:       ds.BloomBits,
			BloomFPEstimate: ds.BloomFPEstimate,
		},
	}, nil
}

// Ready is nil when the log takes appends, the index is open and the
// consumer's last attempt succeeded.
func (b *backend) Ready(context.Context) error {
	if err := b.appender.Writable(); err != nil {
		return walError(err)
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

// behind returns how far checkpoint is behind last (0 when it is not).
func behind(last, checkpoint uint64) uint64 {
	if last < checkpoint {
		return 0
	}
	return last - checkpoint
}
