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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Server is the whole service: the log, the index, the consumer and the HTTP
// server, wired together. Run it once.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	started chan struct{}
	addr    net.Addr

	// What Run opened, closed by closeAll in reverse order.
	closers []closer

	// sourceSeam, when set (by tests), wraps the log as the consumer reads
	// it, e.g. to slow the consumer down; it gets the log and the index.
	sourceSeam func(*wal.Log, *dedup.Store) dedup.Source
}

// closer is one thing Run opened, with what to say when closing it fails.
type closer struct {
	what  string
	close func() error
}

// NewServer returns a server for cfg; logger nil discards the logs.
func NewServer(cfg Config, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, logger: logger, started: make(chan struct{})}
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

// Run opens the log, checks the index file, starts serving (publishing works
// from then on), opens the index and starts the consumer, and serves until
// ctx ends. Then it stops accepting, lets in-flight requests finish, stops the
// consumer and closes the index and the log. It returns nil after a clean
// shutdown.
func (s *Server) Run(ctx context.Context) (err error) {
	defer func() {
		err = errors.Join(err, s.closeAll())
		if err == nil {
			s.logger.Info("stopped cleanly")
		}
	}()
	tlsConfig, err := s.loadTLS()
	if err != nil {
		return err
	}
	if err := s.prepareDataDir(); err != nil {
		return err
	}
	s.logAccess()
	if err := s.serveDebug(); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := api.NewMetrics(reg)
	if err != nil {
		return err
	}
	wlog, err := s.openEventLog(ctx, reg)
	if err != nil {
		return err
	}
	if err := s.checkIndexFile(); err != nil {
		return err
	}
	// After a --wal-repair the log may have lost records the index has
	// applied: open the index before serving, so that its check runs before
	// any new event gets an offset (see openIndex).
	var early *dedup.Store
	if s.cfg.WALRepair {
		if early, err = s.openIndex(wlog, reg); err != nil {
			return err
		}
	}
	be := newBackend(wlog, limits{maxLag: s.cfg.MaxLag, maxBytes: s.cfg.MaxWALBytes,
		maxTopics: s.cfg.MaxTopics, maxCursors: s.cfg.MaxConsumers})
	idx := s.startIndex(wlog, early, be, reg)
	s.onClose("close index", idx.close)
	web, err := s.serve(s.newHandler(be, metrics), tlsConfig)
	if err != nil {
		return err
	}
	s.onClose("serve", web.shutdown)
	return s.wait(ctx, web, idx, wlog)
}

// onClose registers what closeAll closes, in reverse order of registration.
func (s *Server) onClose(what string, close func() error) {
	s.closers = append(s.closers, closer{what: what, close: close})
}

// closeAll closes everything Run opened, the last opened first, and returns
// the errors of those that failed.
func (s *Server) closeAll() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i].close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.closers[i].what, err))
		}
	}
	s.closers = nil
	return errors.Join(errs...)
}

// loadTLS returns the TLS configuration, nil when TLS is off.
func (s *Server) loadTLS() (*tls.Config, error) {
	if s.cfg.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// openLog opens <data-dir>/wal and fsyncs the directories above it.
func (s *Server) openLog(reg prometheus.Registerer) (*wal.Log, error) {
	cfg := s.cfg
	dir := filepath.Join(cfg.DataDir, "wal")
	wlog, err := wal.Open(dir, &wal.Options{
		SegmentSize: cfg.SegmentSize,
		Logger:      s.logger.With("component", "wal"),
		Repair:      cfg.WALRepair,
		Registerer:  reg,
		RetainBytes: cfg.Lifecycle.WALRetainBytes,
		RetainAge:   cfg.Lifecycle.WALRetainAge,
	})
	if errors.Is(err, wal.ErrLocked) {
		return nil, fmt.Errorf("data directory %s is in use by another aggregator process: %w", cfg.DataDir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	s.onClose("close log", wlog.Close)
	// The log fsyncs its own directory; its entry in the data directory,
	// and the data directory's in its parent, need the same after a first
	// start.
	err = wal.SyncDir(cfg.DataDir)
	if err == nil {
		err = wal.SyncDir(filepath.Dir(filepath.Clean(cfg.DataDir)))
	}
	if err != nil {
		return nil, fmt.Errorf("sync data dir: %w", err)
	}
	// rm -rf of the data directory or a restore over it while running:
	// the log refuses appends rather than acknowledge into deleted files.
	if err := wlog.Watch(cfg.DataDir); err != nil {
		return nil, err
	}
	ws := wlog.Stats()
	s.logger.Info("log open", "dir", dir, "first_offset", ws.FirstOffset, "last_offset", ws.LastOffset, "segments", ws.Segments)
	return wlog, nil
}

// newHandler returns the API over be.
func (s *Server) newHandler(be *backend, metrics *api.Metrics) *api.Handler {
	cfg := s.cfg
	inflightWait := cfg.InflightWait
	if inflightWait == 0 {
		inflightWait = -1 // api: negative is "do not wait"; zero its default
	}
	return api.New(be, &api.Options{
		Logger:          s.logger.With("component", "api"),
		Metrics:         metrics,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		MaxBatchEvents:  cfg.MaxBatchEvents,
		MaxPayloadBytes: cfg.MaxPayloadBytes,
		MaxPayloadDepth: cfg.MaxPayloadDepth,
		MaxStatsTopics:  cfg.MaxStatsTopics,
		MaxPageBytes:    cfg.MaxPageBytes,
		ApplyWait:       cfg.ApplyWait,

		MaxInflightPublish: cfg.MaxInflightPublish,
		InflightWait:       inflightWait,
		Tokens:             cfg.Tokens,
		MetricsOpen:        cfg.MetricsOpen,

		MaxInflightBodyBytes: cfg.MaxInflightBodyBytes,
		CORSOrigins:          splitList(cfg.CORSOrigins),
	})
}

// httpStage is the HTTP server serving in the background.
type httpStage struct {
	srv     *http.Server
	timeout time.Duration // for in-flight requests at shutdown
	logger  *slog.Logger
	done    chan struct{} // closed when Serve returned
	err     error         // what Serve returned
}

// serve listens and serves h in the background.
func (s *Server) serve(h *api.Handler, tlsConfig *tls.Config) (*httpStage, error) {
	cfg := s.cfg
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if tlsConfig == nil { // see framing.go
		ln = framingListener{Listener: ln, maxHeader: cfg.MaxHeaderBytes + 4096 + 1}
	}
	web := &httpStage{
		srv: &http.Server{
			Handler:           replyDeadline(closeAfterTransferEncoding(h), cfg.WriteTimeout),
			ReadHeaderTimeout: cfg.ReadHeaderTimeout,
			ReadTimeout:       cfg.ReadTimeout,
			WriteTimeout:      cfg.WriteTimeout,
			IdleTimeout:       cfg.IdleTimeout,
			MaxHeaderBytes:    cfg.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
			TLSConfig:         tlsConfig,
		},
		timeout: cfg.ShutdownTimeout,
		logger:  s.logger,
		done:    make(chan struct{}),
	}
	// Streams and long-polls end when the shutdown starts, instead of
	// holding it up to its timeout.
	web.srv.RegisterOnShutdown(h.CloseStreams)
	go func() {
		defer close(web.done)
		if tlsConfig != nil {
			web.err = web.srv.ServeTLS(ln, "", "") // the certificate is in TLSConfig
			return
		}
		web.err = web.srv.Serve(ln)
	}()
	s.addr = ln.Addr()
	close(s.started)
	s.logger.Info("listening", "addr", s.addr.String(), "data_dir", cfg.DataDir, "tls", tlsConfig != nil)
	return web, nil
}

// shutdown stops accepting and lets in-flight requests finish (their appends
// complete: the log is still open) for up to the shutdown timeout, then
// closes the connections that are left.
func (web *httpStage) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), web.timeout)
	defer cancel()
	if err := web.srv.Shutdown(ctx); err != nil {
		web.logger.Warn("shutdown: closing remaining connections", "err", err)
		_ = web.srv.Close()
	}
	<-web.done // Serve returned http.ErrServerClosed, or an error that wait reported
	return nil
}

// indexStage is the index and its consumer, opened and started in the
// background by startIndex: the index rebuilds its bloom filter, and
// publishing does not wait for it (reads answer 503 until it is there).
type indexStage struct {
	done     chan struct{} // closed when the index is open and the consumer runs, or failed
	store    *dedup.Store
	consumer *dedup.Consumer
	err      error
}

// startIndex opens the index (unless early already is), starts the consumer
// and attaches both to the backend, in the background.
func (s *Server) startIndex(wlog eventLog, early *dedup.Store, be *backend, reg prometheus.Registerer) *indexStage {
	st := &indexStage{done: make(chan struct{}), store: early}
	go func() {
		defer close(st.done)
		if st.store == nil {
			if st.store, st.err = s.openIndex(wlog, reg); st.err != nil {
				return
			}
		}
		var src dedup.Source = wlog
		if l, ok := wlog.(*wal.Log); ok && s.sourceSeam != nil {
			src = s.sourceSeam(l, st.store)
		}
		st.consumer, st.err = dedup.NewConsumer(st.store, src, &dedup.ConsumerOptions{
			ChunkEntries: s.cfg.ChunkEntries,
			ChunkDelay:   s.cfg.ChunkDelay,
			Logger:       s.logger.With("component", "consumer"),
			Registerer:   reg,
		})
		if st.err != nil {
			return
		}
		st.consumer.Start()
		be.attach(st.store, st.consumer)
	}()
	return st
}

// close waits for the index to be open (dedup.Open cannot be interrupted),
// then stops the consumer and closes the index.
func (st *indexStage) close() error {
	<-st.done
	var errs []error
	if st.consumer != nil {
		if err := st.consumer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close consumer: %w", err))
		}
	}
	if st.store != nil {
		if err := st.store.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// wait serves until ctx ends (nil), the HTTP server fails or the index
// cannot be opened (the error).
func (s *Server) wait(ctx context.Context, web *httpStage, idx *indexStage, wlog eventLog) error {
	opened := idx.done
	for {
		select {
		case <-ctx.Done():
			s.logger.Info("shutting down", "cause", context.Cause(ctx))
			return nil
		case <-web.done:
			return fmt.Errorf("serve: %w", web.err)
		case <-opened:
			if idx.err != nil {
				return idx.err
			}
			s.logger.Info("index open, consumer started", "checkpoint", idx.store.Checkpoint(),
				"last_offset", wlog.LastOffset())
			opened = nil
		}
	}
}

// openIndex opens <data-dir>/index.db and checks it against the log.
func (s *Server) openIndex(wlog eventLog, reg prometheus.Registerer) (*dedup.Store, error) {
	path := filepath.Join(s.cfg.DataDir, "index.db")
	start := time.Now()
	st, err := openStore(path, &dedup.Options{
		ExpectedKeys:      s.cfg.BloomExpectedKeys,
		FalsePositiveRate: s.cfg.BloomFPRate,
		LockTimeout:       s.cfg.LockTimeout,
		Logger:            s.logger.With("component", "dedup"),
		Registerer:        reg,
		Retention:         s.cfg.Lifecycle.retention(),
		DedupWindow:       s.cfg.Lifecycle.DedupWindow,
		ExpireBatch:       2 * s.cfg.ChunkEntries, // 0: the default, twice a default chunk
	})
	if errors.Is(err, dedup.ErrLocked) {
		return nil, fmt.Errorf("index %s is in use by another process: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", path, formatHint(err, s.cfg.DataDir))
	}
	if err := s.checkIndex(st, wlog); err != nil {
		_ = st.Close()
		return nil, err
	}
	// bbolt does not fsync the directory that holds a new index.db.
	if err := wal.SyncDir(s.cfg.DataDir); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("sync data dir: %w", err)
	}
	// The local log frees what the index holds: not once index.db is
	// deleted. (A stream is freed by the checkpoints of every node.)
	if w, ok := wlog.(interface{ Watch(path string) error }); ok {
		if err := w.Watch(path); err != nil {
			_ = st.Close()
			return nil, err
		}
	}
	s.logger.Info("index open", "path", path, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}

// checkIndex refuses an index whose checkpoint the log cannot continue from:
// ahead of the log's end (unless --wal-repair, which fills the gap), or
// behind the log's front.
func (s *Server) checkIndex(st *dedup.Store, wlog eventLog) error {
	if cp, last := st.Checkpoint(), wlog.LastOffset(); cp > last {
		// The index has applied records the log no longer holds: new
		// appends would get offsets the consumer skips as applied, and be
		// lost.
		if !s.cfg.WALRepair {
			// Not after a repair of ours: a log from elsewhere, or a
			// deleted one. Leave the decision to the operator.
			return fmt.Errorf("index checkpoint %d is ahead of the log's last offset %d: the log lost "+
				"acknowledged records; refusing to start, since new events would get offsets the consumer "+
				"skips as applied (--wal-repair fills the gap)", cp, last)
		}
		// --wal-repair cut the log at damage the index had applied already:
		// fill the cut offsets so that new events get offsets after the
		// checkpoint. The consumer never reads the fillers (it resumes
		// after the checkpoint) and retention frees them.
		if err := fillLog(wlog, cp); err != nil {
			return fmt.Errorf("fill the log up to the index checkpoint %d: %w", cp, err)
		}
		s.logger.Warn("the repaired log ended before the index checkpoint: appended empty filler records "+
			"so that new events never reuse an applied offset; the events at these offsets were applied "+
			"to the index before the damage and stay listed",
			"fillers", cp-last, "from_offset", last+1, "to_offset", cp)
	}
	if cp, first := st.Checkpoint(), wlog.FirstOffset(); cp+1 < first {
		// The log no longer holds the records after the checkpoint that
		// the index still needs (index.db deleted or replaced by an older
		// copy): the consumer could never resume. Nothing acknowledged is
		// lost yet: the log keeps it; the operator decides.
		return fmt.Errorf("index checkpoint %d is behind the log's first offset %d: records %d to %d "+
			"were freed from the log but are not in the index (was index.db deleted or replaced?); "+
			"refusing to start", cp, first, cp+1, first-1)
	}
	return nil
}

// fillerChunk bounds the filler records of one append.
const fillerChunk = 1 << 16

// fillLog appends empty records until the log's last offset is upto.
func fillLog(l Appender, upto uint64) error {
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
		s.logger.Warn("data directory is accessible to other users; chmod 0700 it", "dir", dir, "mode", perm.String())
	}
	return nil
}

// logAccess says which routes need a token.
func (s *Server) logAccess() {
	t := s.cfg.Tokens
	if t == (api.Tokens{}) {
		s.logger.Warn("no tokens configured: every route is open (set --publish-token, --read-token or --admin-token, or their files)")
		return
	}
	publish := t.Publish != "" || t.Admin != ""
	read := t.Read != "" || t.Admin != ""
	metrics := read && !s.cfg.MetricsOpen
	s.logger.Info("access control", "publish_needs_token", publish, "read_needs_token", read, "metrics_needs_token", metrics)
	if !publish || !read {
		s.logger.Warn("some routes are open while others need a token", "publish_open", !publish, "read_open", !read)
	}
}
