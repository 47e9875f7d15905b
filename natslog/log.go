package natslog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options.
const (
	DefaultStream         = "AGGREGATOR"
	DefaultReplicas       = 3
	DefaultMaxBytes       = 10 << 30 // 10 GiB per replica
	DefaultMaxBatch       = 1000     // nats-server's default jetstream.limits.batch.max_msgs
	DefaultMaxInflight    = 16       // below the servers' 50 open atomic batches per stream with 3 nodes
	DefaultPublishTimeout = 10 * time.Second
	DefaultConnectTimeout = 60 * time.Second
	DefaultReadBuffer     = 1 << 16
	DefaultReadBufferSize = 64 << 20
	DefaultInfoInterval   = time.Second
	DefaultPurgeInterval  = 10 * time.Second
	DefaultPinTTL         = time.Hour
)

// Options configure a Log. A nil *Options is not valid (URLs are needed);
// a zero field means the documented default.
type Options struct {
	// URLs of the NATS servers (nats://host:port); at least one.
	URLs []string
	// Stream is the JetStream stream (default DefaultStream), created if
	// absent; its subject is "<stream in lower case>.events" and its
	// checkpoint bucket "<stream>_CHECKPOINTS".
	Stream string
	// Replicas of the stream and the checkpoint bucket when they are
	// created (default DefaultReplicas).
	Replicas int
	// MaxBytes bounds the stream (discard-new: publishes are refused with
	// ErrOverloaded once it is full; default DefaultMaxBytes, negative: no
	// bound but the servers' own storage limit).
	MaxBytes int64
	// MaxBatch is the largest atomic batch (default DefaultMaxBatch); it
	// must not exceed the servers' jetstream.limits.batch.max_msgs. A
	// request of more records is published as several batches.
	MaxBatch int
	// MaxInflight bounds the atomic batches this node has open at once
	// (default DefaultMaxInflight); all nodes together must stay below the
	// servers' max_inflight_per_stream (50 by default).
	MaxInflight int
	// PublishTimeout bounds one batch's publish and commit (default
	// DefaultPublishTimeout).
	PublishTimeout time.Duration
	// ConnectTimeout bounds how long Open keeps trying to connect and to
	// create or find the stream (default DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// ReadBuffer and ReadBufferBytes bound the records read ahead of the
	// consumer, in number and in bytes (defaults DefaultReadBuffer,
	// DefaultReadBufferSize; a single larger record is still read).
	ReadBuffer      int
	ReadBufferBytes int
	// NodeID names this node's checkpoint entry. Empty: the node neither
	// reports a checkpoint nor purges (a reader that must not hold the
	// stream back).
	NodeID string
	// InfoInterval is how often the stream's state is refreshed for Stats
	// and Writable (default DefaultInfoInterval).
	InfoInterval time.Duration
	// PurgeInterval is how often the checkpoint is reported and the stream
	// purged below the smallest checkpoint (default DefaultPurgeInterval;
	// negative: report, never purge).
	PurgeInterval time.Duration
	// PinTTL is how long a pin (Pin, taken for a backup) holds the stream
	// for the node restored from that backup (default DefaultPinTTL).
	PinTTL time.Duration
	// Logger receives operational messages (nil discards them).
	Logger *slog.Logger
	// Registerer, when set, gets the log's metrics (aggregator_nats_*).
	Registerer prometheus.Registerer
}

func (o *Options) withDefaults() Options {
	c := *o
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Replicas <= 0 {
		c.Replicas = DefaultReplicas
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxBytes < 0 {
		c.MaxBytes = -1
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.ReadBuffer <= 0 {
		c.ReadBuffer = DefaultReadBuffer
	}
	if c.ReadBufferBytes <= 0 {
		c.ReadBufferBytes = DefaultReadBufferSize
	}
	if c.InfoInterval <= 0 {
		c.InfoInterval = DefaultInfoInterval
	}
	if c.PurgeInterval == 0 {
		c.PurgeInterval = DefaultPurgeInterval
	}
	if c.PinTTL <= 0 {
		c.PinTTL = DefaultPinTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats describe the stream as this node last saw it.
type Stats struct {
	FirstSeq uint64 // first message still in the stream (LastSeq+1 when empty)
	LastSeq  uint64 // last message known to this node: published by it, read, or reported by the stream
	Msgs     uint64 // messages in the stream
	Bytes    uint64 // bytes of the stream on one replica
}

// Log is the service's log on a JetStream stream. It is safe for concurrent
// use. Open starts a monitor goroutine (stream state, checkpoint reports,
// purges) and the first Wait or Read starts the reader; Close stops both.
type Log struct {
	opts    Options
	subject string
	logger  *slog.Logger
	metrics *metrics

	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	kv     jetstream.KeyValue

	batches chan struct{} // one token per open atomic batch

	last  atomic.Uint64 // LastOffset
	first atomic.Uint64 // FirstOffset, from the last stream info
	msgs  atomic.Uint64
	bytes atomic.Uint64
	state atomic.Pointer[error] // why appends are refused, nil when they are not
	// The checkpoint: known once the consumer asked for its first record,
	// moved by TruncateFront; reported to the bucket by the monitor.
	applied      atomic.Uint64
	appliedKnown atomic.Bool
	reported     atomic.Uint64
	reportedOnce atomic.Bool

	rd *reader

	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closed    atomic.Bool
}

// Open connects to the servers, creates the stream and the checkpoint
// bucket if absent (or updates the stream's bounds), and starts the monitor.
// It keeps trying for Options.ConnectTimeout or until ctx ends.
func Open(ctx context.Context, opts *Options) (*Log, error) {
	if opts == nil || len(opts.URLs) == 0 {
		return nil, errors.New("natslog: no server URLs")
	}
	o := opts.withDefaults()
	if !validName(o.NodeID) && o.NodeID != "" {
		return nil, fmt.Errorf("natslog: node id %q: want letters, digits, - and _ only", o.NodeID)
	}
	if !validName(o.Stream) {
		return nil, fmt.Errorf("natslog: stream name %q: want letters, digits, - and _ only", o.Stream)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	l := &Log{
		opts:    o,
		subject: strings.ToLower(o.Stream) + ".events",
		logger:  o.Logger,
		metrics: m,
		batches: make(chan struct{}, o.MaxInflight),
	}
	nc, err := nats.Connect(strings.Join(o.URLs, ","),
		nats.Name("aggregator "+o.NodeID),
		nats.RetryOnFailedConnect(true), // keep trying in the background
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.PingInterval(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if !l.closed.Load() {
				l.logger.Warn("nats: disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			l.logger.Info("nats: reconnected", "server", c.ConnectedUrlRedacted())
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("natslog: connect: %w", err)
	}
	l.nc = nc
	if l.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(o.PublishTimeout)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("natslog: jetstream: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	if err := l.setup(octx); err != nil {
		nc.Close()
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.rd = newReader(l)
	l.wg.Add(1)
	go l.monitor()
	l.logger.Info("stream open", "stream", o.Stream, "subject", l.subject, "first_seq", l.first.Load(),
		"last_seq", l.last.Load(), "replicas", o.Replicas, "node", o.NodeID)
	return l, nil
}

// validName reports whether s is a non-empty name of letters, digits, - and
// _ (valid as a stream name and in a KV key).
func validName(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return s != ""
}

// streamConfig is the stream the service needs; see the package
// documentation for why each bound is what it is.
func (l *Log) streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               l.opts.Stream,
		Subjects:           []string{l.subject},
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew,
		MaxBytes:           l.opts.MaxBytes,
		MaxMsgs:            -1,
		MaxAge:             0,
		Storage:            jetstream.FileStorage,
		Replicas:           l.opts.Replicas,
		DenyDelete:         true,
		AllowAtomicPublish: true,
	}
}

// setup creates or updates the stream and the bucket, retrying until ctx
// ends (the cluster may still be electing its leaders).
func (l *Log) setup(ctx context.Context) error {
	var lastErr error
	for attempt := 0; ; attempt++ {
		if lastErr = l.trySetup(ctx); lastErr == nil {
			return nil
		}
		if attempt%8 == 0 {
			l.logger.Info("waiting for the NATS cluster", "err", lastErr)
		}
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("natslog: set up stream %s: %w (last error: %w)", l.opts.Stream, ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

func (l *Log) trySetup(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := l.js.Stream(rctx, l.opts.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = l.js.CreateStream(rctx, l.streamConfig())
	case err == nil:
		cfg := s.CachedInfo().Config
		if !cfg.AllowAtomicPublish || !cfg.DenyDelete || cfg.Retention != jetstream.LimitsPolicy ||
			cfg.Discard != jetstream.DiscardNew || cfg.MaxAge != 0 || cfg.MaxMsgs > 0 ||
			cfg.MaxMsgsPerSubject > 0 || cfg.AllowMsgTTL {
			return fmt.Errorf("natslog: stream %s exists with a configuration that can lose or hole records "+
				"(want limits retention, discard new, deny delete, atomic publish, no age/count/TTL limits)", l.opts.Stream)
		}
		if cfg.MaxBytes != l.opts.MaxBytes {
			cfg.MaxBytes = l.opts.MaxBytes
			s, err = l.js.UpdateStream(rctx, cfg)
		}
	}
	if err != nil {
		return err
	}
	l.stream = s
	l.noteInfo(s.CachedInfo())
	if l.kv, err = l.js.CreateOrUpdateKeyValue(rctx, jetstream.KeyValueConfig{
		Bucket:      l.opts.Stream + "_CHECKPOINTS",
		Description: "last stream sequence each aggregator node applied; the stream is purged below the smallest",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    l.opts.Replicas,
	}); err != nil {
		return fmt.Errorf("checkpoint bucket: %w", err)
	}
	// Register before the checkpoint is known (the index may still be
	// opening): 0 holds the whole stream back until the first real report,
	// so no other node's purge can pass what this one needs. A node that
	// has an entry keeps it: it was reported after an index commit, so it is
	// at or below the index's checkpoint.
	if l.opts.NodeID != "" {
		_, err := l.kv.Create(rctx, checkpointKey(l.opts.NodeID), []byte("0"))
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("register checkpoint: %w", err)
		}
	}
	return nil
}

// noteInfo records the stream's state.
func (l *Log) noteInfo(info *jetstream.StreamInfo) {
	if info == nil {
		return
	}
	first := info.State.FirstSeq
	if info.State.Msgs == 0 {
		first = info.State.LastSeq + 1 // empty: the next sequence, as the local log says
	}
	l.first.Store(first)
	l.msgs.Store(info.State.Msgs)
	l.bytes.Store(info.State.Bytes)
	l.noteLast(info.State.LastSeq)
}

// noteLast moves LastOffset up to seq.
func (l *Log) noteLast(seq uint64) {
	for {
		cur := l.last.Load()
		if seq <= cur || l.last.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// monitor refreshes the stream state every InfoInterval and reports the
// checkpoint and purges every PurgeInterval, until Close.
func (l *Log) monitor() {
	defer l.wg.Done()
	info := time.NewTicker(l.opts.InfoInterval)
	defer info.Stop()
	every := l.opts.PurgeInterval
	if every < 0 {
		every = DefaultPurgeInterval // report only
	}
	purge := time.NewTicker(every)
	defer purge.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-info.C:
			l.refresh()
		case <-purge.C:
			l.retain()
		}
	}
}

// refresh asks the stream leader for the stream's state; a failure makes
// Writable report the cluster unavailable until the next success.
func (l *Log) refresh() {
	ctx, cancel := context.WithTimeout(l.ctx, max(2*time.Second, l.opts.InfoInterval))
	defer cancel()
	info, err := l.stream.Info(ctx)
	if l.ctx.Err() != nil {
		return
	}
	if err != nil {
		err = fmt.Errorf("%w: stream info: %w", ErrUnavailable, err)
		if l.state.Load() == nil {
			l.logger.Warn("stream unavailable", "err", err)
		}
		l.state.Store(&err)
		return
	}
	if l.state.Load() != nil {
		l.logger.Info("stream available again")
	}
	l.state.Store(nil)
	l.noteInfo(info)
}

// Writable returns nil when the log accepts appends as far as this node can
// tell: connected, and the stream leader answered the last state request.
// Otherwise an error wrapping ErrUnavailable or ErrClosed (for /readyz).
func (l *Log) Writable() error {
	if l.closed.Load() {
		return ErrClosed
	}
	if !l.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to NATS (%s)", ErrUnavailable, l.nc.Status())
	}
	if p := l.state.Load(); p != nil {
		return *p
	}
	return nil
}

// FirstOffset returns the stream's first sequence as last seen.
func (l *Log) FirstOffset() uint64 { return l.first.Load() }

// LastOffset returns the highest stream sequence this node knows of: its
// own publishes, what it read, what the stream reported.
func (l *Log) LastOffset() uint64 { return l.last.Load() }

// Stats returns the stream's state as last seen.
func (l *Log) Stats() Stats {
	return Stats{FirstSeq: l.first.Load(), LastSeq: l.last.Load(), Msgs: l.msgs.Load(), Bytes: l.bytes.Load()}
}

// Close stops the reader and the monitor, reports the last checkpoint and
// closes the connection. Appends still running get ErrUnavailable or
// ErrClosed. Calling Close again returns nil.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		l.rd.stop()
		l.cancel()
		l.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l.report(ctx)
		cancel()
		l.nc.Close()
	})
	return nil
}
