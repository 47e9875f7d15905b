package main

import (
	"context"
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
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
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

	be := newBackend(wlog, cfg.MaxLag)
	handler := api.New(be, &api.Options{
		Logger:          s.log.With("component", "api"),
		Metrics:         metrics,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		MaxBatchEvents:  cfg.MaxBatchEvents,
		MaxPayloadBytes: cfg.MaxPayloadBytes,
		MaxPayloadDepth: cfg.MaxPayloadDepth,
		MaxStatsTopics:  cfg.MaxStatsTopics,
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
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	s.addr = ln.Addr()
	close(s.started)
	s.log.Info("listening", "addr", s.addr.String(), "data_dir", cfg.DataDir)

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
			o.consumer = dedup.NewConsumer(o.store, wlog, &dedup.ConsumerOptions{
				ChunkEntries: cfg.ChunkEntries,
				Logger:       s.log.With("component", "consumer"),
				OnApply:      metrics.OnApply,
			})
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
		// The index has applied records the log no longer holds (after
		// --wal-repair cut it, or a log from elsewhere): new appends would
		// get offsets the consumer skips as applied, and be lost.
		_ = st.Close()
		return nil, fmt.Errorf("index checkpoint %d is ahead of the log's last offset %d: the log lost "+
			"acknowledged records (a --wal-repair cut?); refusing to start, since new events would get "+
			"offsets the consumer skips as applied", cp, last)
	}
	s.log.Info("index open", "path", path, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}
