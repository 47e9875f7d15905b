package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/wal"
)

// Server is the whole service: the log, the index, the consumer and the HTTP
// server, wired together. Run it once.
type Server struct {
	cfg     Config
	log     *slog.Logger
	started chan struct{}
	addr    net.Addr

	// walSeam, when set (by tests), adjusts the log's options before Open,
	// e.g. to inject I/O faults.
	walSeam func(*wal.Options)
	// consumerSeam, when set (by tests), adjusts the consumer's options
	// before it starts, e.g. to slow it down; it gets the log and the index.
	consumerSeam func(*dedup.ConsumerOptions, *wal.Log, *dedup.Store)
}

// NewServer returns a server for cfg; logger nil discards the logs.
func NewServer(cfg Config, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: logger, started: make(chan struct{})}
}

// Started is closed once the server listens (Addr is valid then).
func (s *Server) Started() <-chan struct{} { return s.started }

// Addr is the address the server listens on; nil until Started is closed.
func (s *Server) Addr() net.Addr {
	select {
	case <-s.started:
		return s.addr
	default:
		return nil
	}
}

// Run opens the log, starts serving (publishing works from then on), opens the
// index and starts the consumer, and serves until ctx ends. Then it stops
// accepting, lets in-flight requests finish, stops the consumer and closes the
// log and the index. It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) (err error) {
	cfg := s.cfg
	if err := s.prepareDataDir(); err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	s.logAccess()
	metrics := api.NewMetrics()

	walDir := filepath.Join(cfg.DataDir, "wal")
	walOpts := &wal.Options{
		SegmentSize: cfg.SegmentSize,
		Logger:      s.log.With("component", "wal"),
		Repair:      cfg.WALRepair,
		OnCommit:    metrics.OnCommit,
	}
	if s.walSeam != nil {
		s.walSeam(walOpts)
	}
	wlog, err := wal.Open(walDir, walOpts)
	if errors.Is(err, wal.ErrLocked) {
		return fmt.Errorf("data directory %s is in use by another aggregator process: %w", cfg.DataDir, err)
	}
	if err != nil {
		return fmt.Errorf("open log %s: %w", walDir, err)
	}
	// The log fsyncs its own directory; its entry in the data directory,
	// and the data directory's in its parent, need the same after a first
	// start.
	err = syncDir(cfg.DataDir)
	if err == nil {
		err = syncDir(filepath.Dir(filepath.Clean(cfg.DataDir)))
	}
	if err != nil {
		_ = wlog.Close()
		return fmt.Errorf("sync data dir: %w", err)
	}
	defer func() {
		if cerr := wlog.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close log: %w", cerr)
		}
		if err == nil {
			s.log.Info("stopped cleanly")
		}
	}()
	ws := wlog.Stats()
	s.log.Info("log open", "dir", walDir, "first_offset", ws.FirstOffset, "last_offset", ws.LastOffset, "segments", ws.Segments)

	// After a --wal-repair the log may have lost records the index has
	// applied: open the index before serving, so that its check runs before
	// any new event gets an offset (see openIndex).
	var early *dedup.Store
	if cfg.WALRepair {
		if early, err = s.openIndex(wlog); err != nil {
			return err
		}
	}

	be := newBackend(wlog, limits{maxLag: cfg.MaxLag, maxBytes: cfg.MaxWALBytes})
	inflightWait := cfg.InflightWait
	if inflightWait == 0 {
		inflightWait = -1 // api: negative is "do not wait"; zero its default
	}
	handler := api.New(be, &api.Options{
		Logger:          s.log.With("component", "api"),
		Metrics:         metrics,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		MaxBatchEvents:  cfg.MaxBatchEvents,
		MaxPayloadBytes: cfg.MaxPayloadBytes,
		MaxPayloadDepth: cfg.MaxPayloadDepth,
		MaxStatsTopics:  cfg.MaxStatsTopics,

		MaxInflightPublish: cfg.MaxInflightPublish,
		InflightWait:       inflightWait,
		Tokens:             cfg.Tokens,
		MetricsOpen:        cfg.MetricsOpen,
	})
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		if early != nil {
			_ = early.Close()
		}
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConfig,
	}
	serveErr := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			serveErr <- srv.ServeTLS(ln, "", "") // the certificate is in TLSConfig
			return
		}
		serveErr <- srv.Serve(ln)
	}()
	s.addr = ln.Addr()
	close(s.started)
	s.log.Info("listening", "addr", s.addr.String(), "data_dir", cfg.DataDir, "tls", tlsConfig != nil)

	// The index opens in the background (it rebuilds its bloom filter), so
	// publishing does not wait for it; reads answer 503 until it is there.
	type opened struct {
		store    *dedup.Store
		consumer *dedup.Consumer
		err      error
	}
	indexc := make(chan opened, 1)
	go func() {
		o := opened{store: early}
		if o.store == nil {
			o.store, o.err = s.openIndex(wlog)
		}
		if o.err == nil {
			copts := &dedup.ConsumerOptions{
				ChunkEntries: cfg.ChunkEntries,
				ChunkDelay:   cfg.ChunkDelay,
				Logger:       s.log.With("component", "consumer"),
				OnApply:      metrics.OnApply,
			}
			if s.consumerSeam != nil {
				s.consumerSeam(copts, wlog, o.store)
			}
			o.consumer = dedup.NewConsumer(o.store, wlog, copts)
			o.consumer.Start()
			be.attach(o.store, o.consumer)
		}
		indexc <- o
	}()

	var idx opened
	indexDone := false
	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			s.log.Info("shutting down", "cause", context.Cause(ctx))
			break wait
		case err := <-serveErr:
			runErr = fmt.Errorf("serve: %w", err)
			serveErr = nil
			break wait
		case idx = <-indexc:
			indexDone = true
			if idx.err != nil {
				runErr = idx.err
				break wait
			}
			s.log.Info("index open, consumer started", "checkpoint", idx.store.Checkpoint(),
				"last_offset", wlog.LastOffset())
			indexc = nil
		}
	}

	// Stop accepting and let in-flight requests finish (their appends
	// complete: the log is still open).
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	if err := srv.Shutdown(shutCtx); err != nil {
		s.log.Warn("shutdown: closing remaining connections", "err", err)
		_ = srv.Close()
	}
	cancel()
	if serveErr != nil {
		if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) && runErr == nil {
			runErr = fmt.Errorf("serve: %w", err)
		}
	}
	if !indexDone {
		idx = <-indexc // dedup.Open cannot be interrupted; wait for it
	}
	if idx.consumer != nil {
		if err := idx.consumer.Close(); err != nil && runErr == nil {
			runErr = fmt.Errorf("close consumer: %w", err)
		}
	}
	if idx.store != nil {
		if err := idx.store.Close(); err != nil && runErr == nil {
			runErr = fmt.Errorf("close index: %w", err)
		}
	}
	return runErr // the log closes last, deferred above
}

// openIndex opens <data-dir>/index.db.
func (s *Server) openIndex(wlog *wal.Log) (*dedup.Store, error) {
	path := filepath.Join(s.cfg.DataDir, "index.db")
	start := time.Now()
	st, err := dedup.Open(path, &dedup.Options{
		ExpectedKeys:      s.cfg.BloomExpectedKeys,
		FalsePositiveRate: s.cfg.BloomFPRate,
		LockTimeout:       s.cfg.LockTimeout,
		Logger:            s.log.With("component", "dedup"),
	})
	if errors.Is(err, dedup.ErrLocked) {
		return nil, fmt.Errorf("index %s is in use by another process: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	if cp, last := st.Checkpoint(), wlog.LastOffset(); cp > last {
		// The index has applied records the log no longer holds: new
		// appends would get offsets the consumer skips as applied, and be
		// lost.
		if !s.cfg.WALRepair {
			// Not after a repair of ours: a log from elsewhere, or a
			// deleted one. Leave the decision to the operator.
			_ = st.Close()
			return nil, fmt.Errorf("index checkpoint %d is ahead of the log's last offset %d: the log lost "+
				"acknowledged records; refusing to start, since new events would get offsets the consumer "+
				"skips as applied (--wal-repair fills the gap)", cp, last)
		}
		// --wal-repair cut the log at damage the index had applied already:
		// fill the cut offsets so that new events get offsets after the
		// checkpoint. The consumer never reads the fillers (it resumes
		// after the checkpoint) and retention frees them.
		if err := fillLog(wlog, cp); err != nil {
			_ = st.Close()
			return nil, fmt.Errorf("fill the log up to the index checkpoint %d: %w", cp, err)
		}
		s.log.Warn("the repaired log ended before the index checkpoint: appended empty filler records "+
			"so that new events never reuse an applied offset; the events at these offsets were applied "+
			"to the index before the damage and stay listed",
			"fillers", cp-last, "from_offset", last+1, "to_offset", cp)
	}
	if cp, first := st.Checkpoint(), wlog.FirstOffset(); cp+1 < first {
		// The log no longer holds the records after the checkpoint that
		// the index still needs (index.db deleted or replaced by an older
		// copy): the consumer could never resume. Nothing acknowledged is
		// lost yet: the log keeps it; the operator decides.
		_ = st.Close()
		return nil, fmt.Errorf("index checkpoint %d is behind the log's first offset %d: records %d to %d "+
			"were freed from the log but are not in the index (was index.db deleted or replaced?); "+
			"refusing to start", cp, first, cp+1, first-1)
	}
	// bbolt does not fsync the directory that holds a new index.db.
	if err := syncDir(s.cfg.DataDir); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("sync data dir: %w", err)
	}
	s.log.Info("index open", "path", path, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}

// fillerChunk bounds the filler records of one append.
const fillerChunk = 1 << 16

// fillLog appends empty records until the log's last offset is upto.
func fillLog(l *wal.Log, upto uint64) error {
	empty := []byte{}
	for last := l.LastOffset(); last < upto; last = l.LastOffset() {
		recs := make([][]byte, min(upto-last, fillerChunk))
		for i := range recs {
			recs[i] = empty
		}
		if _, _, err := l.Append(context.Background(), recs); err != nil {
			return fmt.Errorf("append fillers: %w", err)
		}
	}
	return nil
}

// prepareDataDir creates the data directory with mode 0700 (the log and the
// index create their files 0600) and warns when an existing one is open to
// other users.
func (s *Server) prepareDataDir() error {
	dir := s.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s: not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		s.log.Warn("data directory is accessible to other users; chmod 0700 it", "dir", dir, "mode", perm.String())
	}
	return nil
}

// logAccess says which routes need a token.
func (s *Server) logAccess() {
	t := s.cfg.Tokens
	if t == (api.Tokens{}) {
		s.log.Warn("no tokens configured: every route is open (set --publish-token, --read-token or --admin-token, or their files)")
		return
	}
	publish := t.Publish != "" || t.Admin != ""
	read := t.Read != "" || t.Admin != ""
	metrics := read && !s.cfg.MetricsOpen
	s.log.Info("access control", "publish_needs_token", publish, "read_needs_token", read, "metrics_needs_token", metrics)
	if !publish || !read {
		s.log.Warn("some routes are open while others need a token", "publish_open", !publish, "read_open", !read)
	}
}

// syncDir fsyncs a directory, so that the entries created in it survive a
// power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return d.Close()
}
