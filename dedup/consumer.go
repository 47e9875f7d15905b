package dedup

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/prometheus/client_golang/prometheus"
)

// Source is the log the consumer tails: the local write-ahead log
// (*wal.Log) or, in cluster mode, a replicated stream. Offsets are
// contiguous from FirstOffset to LastOffset.
type Source interface {
	// Wait returns nil as soon as the log holds an offset > after, and
	// ctx.Err() when ctx ends first.
	Wait(ctx context.Context, after uint64) error
	// Read calls fn in offset order for up to limit records from offset
	// from, stopping at the last offset there is.
	Read(from uint64, limit int, fn func(offset uint64, data []byte) error) error
	// TruncateFront tells the log that the records below offset are applied
	// and may be freed.
	TruncateFront(offset uint64) error
	// LastOffset returns the offset of the last record, 0 when none.
	LastOffset() uint64
}

// Consumer defaults.
const (
	DefaultChunkEntries = 16384
	DefaultChunkDelay   = 10 * time.Millisecond
	DefaultRetryMin     = 10 * time.Millisecond
	DefaultRetryMax     = 2 * time.Second
	// DefaultIdleInterval is how often an idle consumer runs a
	// maintenance step (Store.Maintain).
	DefaultIdleInterval = time.Second
)

// ConsumerOptions configure a Consumer. A nil *ConsumerOptions, or a zero
// field, means the documented default.
type ConsumerOptions struct {
	// ChunkEntries bounds the entries applied in one transaction (default
	// DefaultChunkEntries).
	ChunkEntries int
	// ChunkDelay paces the index transactions: a chunk that is not full
	// waits for more appends until ChunkDelay has passed since the previous
	// apply began (or the consumer started), so that the index commits at
	// most once per ChunkDelay under a stream of small appends, while the
	// first append after a quiet spell is applied at once (default
	// DefaultChunkDelay; a negative value applies at once what is there).
	// While a Store.WaitCheckpoint caller waits, chunks are not paced.
	ChunkDelay time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a failed
	// read or apply (defaults DefaultRetryMin, DefaultRetryMax).
	RetryMin, RetryMax time.Duration
	// IdleInterval is how often the consumer, while it has nothing to
	// apply, runs a maintenance step of the store (expiry, the dedup
	// window) and tells the log what it may free (default
	// DefaultIdleInterval). After a step that a bound stopped, the next one
	// follows at once unless records arrived.
	IdleInterval time.Duration
	// Logger receives operational messages (nil discards them).
	Logger *slog.Logger
	// Registerer, when set, gets the consumer's metrics: chunk apply time
	// and size, unique and duplicate events, and the lag behind the source
	// (aggregator_consumer_*, aggregator_events_unique_total,
	// aggregator_events_duplicate_total).
	Registerer prometheus.Registerer

	// Test hooks, set by this package's tests: onApply is called after each
	// committed chunk; beforeApply before each attempt to apply a chunk, with
	// its size (a slow function slows the consumer down); afterApply after a
	// commit, before the log is truncated, and a non-nil error stops the
	// consumer right there (the crash seam).
	onApply     func(entries, unique, duplicates int, took time.Duration)
	beforeApply func(entries int)
	afterApply  func(checkpoint uint64) error
}

// Consumer tails a Source and applies its records to a Store in chunks.
type Consumer struct {
	s       *Store
	src     Source
	opts    ConsumerOptions
	logger  *slog.Logger
	metrics *consumerMetrics

	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	startOnce sync.Once
	started   atomic.Bool
	closeOnce sync.Once

	lastErr atomic.Pointer[error]
}

// NewConsumer returns a consumer of src into s; Start starts it. It fails
// only when its metrics cannot be registered.
func NewConsumer(s *Store, src Source, opts *ConsumerOptions) (*Consumer, error) {
	var o ConsumerOptions
	if opts != nil {
		o = *opts
	}
	if o.ChunkEntries <= 0 {
		o.ChunkEntries = DefaultChunkEntries
	}
	if o.ChunkDelay == 0 {
		o.ChunkDelay = DefaultChunkDelay
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(DefaultRetryMax, o.RetryMin)
	}
	if o.IdleInterval <= 0 {
		o.IdleInterval = DefaultIdleInterval
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newConsumerMetrics(o.Registerer, s, src)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Consumer{s: s, src: src, opts: o, logger: logger, metrics: m, ctx: ctx, cancel: cancel, done: make(chan struct{})}, nil
}

// Start starts the tailing goroutine, which resumes at s.Checkpoint()+1.
// Calling it again does nothing.
func (c *Consumer) Start() {
	c.startOnce.Do(func() {
		c.started.Store(true)
		go c.run()
	})
}

// Close stops the consumer and waits for its goroutine. A chunk being applied
// is committed or rolled back as a whole. Calling Close again is harmless.
func (c *Consumer) Close() error {
	c.closeOnce.Do(func() {
		c.startOnce.Do(func() {}) // a later Start does nothing
		c.cancel()
		if c.started.Load() {
			<-c.done
		}
	})
	return nil
}

// Err returns the error of the last failed read or apply, or nil when the
// last attempt succeeded (for readiness checks).
func (c *Consumer) Err() error {
	if p := c.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Consumer) setErr(err error) {
	if err == nil {
		if c.lastErr.Load() != nil {
			c.lastErr.Store(nil)
		}
		return
	}
	c.lastErr.Store(&err)
}

func (c *Consumer) run() {
	defer close(c.done)
	var (
		chunk     []Entry // read but not yet committed; kept for the retry
		backoff   time.Duration
		lastApply = time.Now() // when the last apply began
	)
	fail := func(msg string, err error) bool {
		c.setErr(err)
		backoff = min(max(backoff*2, c.opts.RetryMin), c.opts.RetryMax)
		c.logger.Error(msg, "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		defer t.Stop()
		select {
		case <-c.ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for c.ctx.Err() == nil {
		if chunk == nil {
			next := c.s.Checkpoint() + 1
			if err := c.waitIdle(next - 1); err != nil {
				if c.ctx.Err() != nil || !fail("dedup: wait for log", err) {
					return
				}
				continue
			}
			var err error
			if chunk, err = c.readChunk(next, lastApply); err != nil {
				chunk = nil
				if c.ctx.Err() != nil || !fail("dedup: read log", err) {
					return
				}
				continue
			}
			if len(chunk) == 0 {
				chunk = nil
				continue
			}
		}
		if c.opts.beforeApply != nil {
			c.opts.beforeApply(len(chunk))
		}
		start := time.Now()
		lastApply = start
		res, err := c.s.Apply(chunk)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				c.setErr(err)
				return
			}
			if errors.Is(err, ErrOutOfOrder) {
				chunk = nil // someone else moved the checkpoint: read again from it
			}
			if !fail("dedup: apply chunk", err) {
				return
			}
			continue
		}
		took := time.Since(start)
		n := len(chunk)
		chunk, backoff = nil, 0
		c.setErr(nil)
		c.metrics.applied(n, res.Unique, res.Duplicates, took)
		if c.opts.onApply != nil {
			c.opts.onApply(n, res.Unique, res.Duplicates, took)
		}
		if c.opts.afterApply != nil {
			if err := c.opts.afterApply(res.Checkpoint); err != nil {
				return
			}
		}
		if err := c.src.TruncateFront(res.Checkpoint + 1); err != nil {
			c.logger.Warn("dedup: truncate log front", "offset", res.Checkpoint+1, "err", err)
		}
	}
}

// waitIdle waits, as Source.Wait, for a record after offset after,
// running a maintenance step every IdleInterval meanwhile (at once again
// after one that a bound stopped). A failed step is logged and retried at
// the next interval; it does not stop the wait.
func (c *Consumer) waitIdle(after uint64) error {
	wait := c.opts.IdleInterval
	for {
		ctx, cancel := context.WithTimeout(c.ctx, wait)
		err := c.src.Wait(ctx, after)
		cancel()
		if err == nil || c.ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		more, err := c.s.Maintain()
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			c.logger.Error("dedup: maintenance step", "err", err)
		}
		// An archive bounded by age frees segments without new records.
		if err := c.src.TruncateFront(after + 1); err != nil {
			c.logger.Warn("dedup: truncate log front", "offset", after+1, "err", err)
		}
		wait = c.opts.IdleInterval
		if more && err == nil {
			wait = 0
		}
	}
}

// readChunk reads up to ChunkEntries records from offset next, waiting for
// more appends while the chunk is not full until ChunkDelay after
// lastApply.
func (c *Consumer) readChunk(next uint64, lastApply time.Time) ([]Entry, error) {
	entries := make([]Entry, 0, min(c.opts.ChunkEntries, 1024))
	read := func(from uint64) error {
		return c.src.Read(from, c.opts.ChunkEntries-len(entries), func(off uint64, data []byte) error {
			ev, err := event.Decode(data)
			if err != nil {
				// Apply counts an entry without topic as malformed, so the
				// checkpoint still covers it.
				c.logger.Error("dedup: undecodable log record skipped", "offset", off, "err", err)
				ev = event.Event{}
			}
			entries = append(entries, Entry{Offset: off, Event: ev})
			return nil
		})
	}
	if err := read(next); err != nil {
		return nil, err
	}
	wait := c.opts.ChunkDelay - time.Since(lastApply)
	if len(entries) >= c.opts.ChunkEntries || wait <= 0 || len(entries) == 0 {
		return entries, nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, wait)
	defer cancel()
	if !c.s.urgency.pace(cancel) {
		return entries, nil // someone waits for this apply (?wait=applied)
	}
	defer c.s.urgency.done()
	for len(entries) < c.opts.ChunkEntries {
		last := next + uint64(len(entries)) - 1
		if c.src.Wait(ctx, last) != nil {
			break // delay over (or closing): apply what we have
		}
		if err := read(last + 1); err != nil {
			return nil, err
		}
	}
	return entries, nil
}
