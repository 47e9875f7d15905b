package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for the zero fields of Options.
const (
	DefaultSegmentSize     = 4 << 20
	DefaultMaxBatchRecords = 1 << 16
	DefaultMaxBatchBytes   = 16 << 20
	DefaultCacheRecords    = 1 << 16
	DefaultCacheBytes      = 32 << 20
	DefaultRetryInterval   = time.Second
)

// Log keys.
const (
	logKeySegment       = "segment"
	logKeyOffset        = "offset"
	logKeyBytes         = "bytes"
	logKeyReason        = "reason"
	logKeyErr           = "err"
	logKeyMovedSegments = "moved_segments"
	logKeyAside         = "aside"
)

// fault names an I/O step at which the injectFault test hook can make the
// log fail, so that tests exercise the failure paths without a broken disk.
type fault int

const (
	// faultWrite is checked after a group commit was handed to the segment
	// file (tidwall/wal WriteBatch) and before its fsync: an error here acts
	// like a failed write(2) whose bytes may or may not have reached the file.
	faultWrite fault = iota + 1
	// faultSync is checked before the fsync of the tail segment; an error
	// here acts like a failed fsync(2) (the records are in the file).
	faultSync
	// faultSyncDir is checked before the directory fsync that follows the
	// creation of a segment.
	faultSyncDir
	// faultRecover is checked at the start of every recovery attempt after a
	// failure; an error keeps the log unavailable.
	faultRecover
)

func (f fault) String() string {
	switch f {
	case faultWrite:
		return "write"
	case faultSync:
		return "sync"
	case faultSyncDir:
		return "sync-dir"
	case faultRecover:
		return "recover"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// Options configures a Log. A nil *Options and zero fields mean the defaults.
type Options struct {
	// SegmentSize is the size in bytes at which a segment file is closed and
	// a new one started (tidwall/wal's SegmentSize). Default 4 MiB.
	// Retention frees whole segments, so the log keeps at most about one
	// segment more than the unconsumed records.
	SegmentSize int

	// Logger receives warnings about cut torn tails, repairs and I/O
	// failures. Default: discard.
	Logger *slog.Logger

	// Repair makes Open cut the log at a damaged record that was already
	// acknowledged (anything but a torn tail), instead of failing with a
	// *CorruptionError. The damaged segment is first copied to the damaged/
	// subdirectory of the log and every later segment is moved there.
	// Records from the damaged one on are dropped and their offsets are
	// given to new appends. Meant for an operator's explicit decision.
	Repair bool

	// Registerer, when set, gets the log's metrics: fsync latency, records
	// per group commit, bytes written, and the log's size and last offset
	// (aggregator_wal_*).
	Registerer prometheus.Registerer

	// MaxBatchRecords and MaxBatchBytes bound one group commit. A single
	// Append larger than them is still written whole, as one commit.
	// Defaults 65536 records and 16 MiB.
	MaxBatchRecords int
	MaxBatchBytes   int

	// CacheRecords and CacheBytes bound the in-memory copy of the most
	// recently committed records from which Read serves readers that keep
	// up, without touching the disk or the writer. Defaults 65536 records
	// and 32 MiB.
	CacheRecords int
	CacheBytes   int

	// PipelineBytes, when positive, lets the writer write the next group
	// commit while the previous one is being fsynced, whenever at least
	// this many bytes of records are queued. This overlaps the CPU work of
	// one commit with the disk wait of the other; on the reference machine
	// (2 cores, virtual disk, see docs/performance.md) it measured no gain,
	// so it is off by default. 64 KiB is a sensible value where it helps.
	PipelineBytes int

	// RetryInterval is how often the writer retries recovery on its own
	// while the log is unavailable and no Append arrives. Default 1s.
	RetryInterval time.Duration

	// RetainBytes and RetainAge keep segments that TruncateFront would
	// free as an archive of applied records. With both zero (the default)
	// TruncateFront frees every segment behind its offset. Otherwise it
	// frees the oldest such segment only while the log's segment files
	// hold more than RetainBytes (when positive), or while the segment's
	// last write is more than RetainAge ago (when positive); a negative
	// value is no bound of its own, so RetainBytes -1 with RetainAge 0
	// keeps every segment: the log from offset 1 on, a full audit trail.
	RetainBytes int64
	RetainAge   time.Duration

	// Test hooks, set by this package's tests: injectFault is called at
	// each fault step, and a non-nil result makes that step fail with it;
	// onCommit is called by the writer after each group commit, before its
	// callers are answered; refreshAfter overrides defaultRefreshAfter;
	// noInlineSync makes the writer hand every commit to the syncer; now
	// is the clock of the log throttle (default time.Now); checkEvery
	// overrides checkInterval.
	injectFault  func(fault) error
	onCommit     func(records, bytes int, fsync time.Duration)
	refreshAfter int64
	noInlineSync bool
	now          func() time.Time
	checkEvery   time.Duration
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.SegmentSize <= 0 {
		r.SegmentSize = DefaultSegmentSize
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.MaxBatchRecords <= 0 {
		r.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if r.MaxBatchBytes <= 0 {
		r.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if r.CacheRecords <= 0 {
		r.CacheRecords = DefaultCacheRecords
	}
	if r.CacheBytes <= 0 {
		r.CacheBytes = DefaultCacheBytes
	}
	if r.RetryInterval <= 0 {
		r.RetryInterval = DefaultRetryInterval
	}
	if r.refreshAfter <= 0 {
		r.refreshAfter = defaultRefreshAfter
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.checkEvery <= 0 {
		r.checkEvery = checkInterval
	}
	return r
}

// Stats is a snapshot of the log's size.
type Stats struct {
	FirstOffset uint64 // first record still in the log (LastOffset+1 when empty)
	LastOffset  uint64 // last acknowledged record, 0 when nothing was ever written
	Segments    int    // segment files
	Bytes       int64  // bytes in segment files (acknowledged records only)
	// Archived is the part of Bytes in segments that TruncateFront was
	// allowed to free but kept as an archive (Options.RetainBytes,
	// RetainAge).
	Archived int64
}

// Log is a write-ahead log of records with contiguous offsets. It is safe for
// concurrent use. See the package documentation for its guarantees.
type Log struct {
	dir     string
	opts    Options
	logger  *slog.Logger
	lock    *os.File
	metrics *metrics

	// Owned by the writer goroutine (and by Open before it starts and Close
	// after it ended).
	app      appender
	written  uint64 // last offset handed to tidwall/wal
	frame    []byte
	inflight *job // written, being fsynced by the syncer
	ready    *job // written while inflight was being fsynced
	flog     failureLog

	// The syncer goroutine fsyncs what the writer wrote.
	syncReq    chan *job
	syncRes    chan *job
	syncerDone chan struct{}

	// The queue of appends.
	qmu         sync.Mutex
	pending     []*request
	queued      int          // bytes of the records in pending
	outstanding atomic.Int64 // appends queued or in the writer, not yet answered
	spare       []*request
	closing     bool
	kick        chan struct{}
	quit        chan struct{}
	done        chan struct{}

	// Committed state, read by everyone, written by the writer and by
	// TruncateFront.
	mu     sync.RWMutex
	segs   []segment // segs[len(segs)-1] is the tail; its size is durable
	first  uint64
	last   atomic.Uint64
	notify chan struct{} // closed and replaced after each commit
	closed bool

	state atomic.Pointer[error] // non-nil while appends are refused

	// Removal of the log's files (files.go): the log directory as opened,
	// the paths given to Watch, and the final error once one was removed.
	dirInfo os.FileInfo
	watchMu sync.Mutex
	watched []watchedFile
	lost    atomic.Pointer[error]

	cache    tailCache
	reader   diskReader
	truncMu  sync.Mutex
	removed  atomic.Int64 // segments removed since tidwall/wal was last opened
	archived atomic.Int64 // bytes of the segments kept as an archive (see Options.RetainBytes)

	closeOnce sync.Once
	closeErr  error
}

// request is one Append call waiting for the writer.
type request struct {
	ctx         context.Context
	recs        [][]byte
	bytes       int
	taken       bool // the writer owns it (under qmu)
	cancelled   bool // the caller gave up before it was taken (under qmu)
	first, last uint64
	err         error
	done        chan struct{}
}

// Open opens (creating if needed) the log in dir. It verifies every record,
// cuts a torn tail off the last segment (logging a warning), and fails with
// a *CorruptionError on damage in an acknowledged record unless
// opts.Repair is set. See Options for the defaults.
func Open(dir string, opts *Options) (*Log, error) {
	o := opts.withDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		dir:     dir,
		dirInfo: dirInfo,
		opts:    o,
		logger:  o.Logger,
		lock:    lock,
		app:     appender{dir: dir, segmentSize: o.SegmentSize, refreshAfter: o.refreshAfter},
		flog:    failureLog{logger: o.Logger, now: o.now},
		kick:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		notify:  make(chan struct{}),

		syncReq:    make(chan *job),
		syncRes:    make(chan *job),
		syncerDone: make(chan struct{}),
	}
	if err := l.load(); err != nil {
		lock.Close()
		return nil, err
	}
	if l.metrics, err = newMetrics(o.Registerer, l); err != nil {
		return nil, errors.Join(err, l.app.close(), lock.Close())
	}
	go l.syncer()
	go l.run()
	return l, nil
}

// load verifies the segments, repairs what may be repaired and opens
// tidwall/wal on the result.
func (l *Log) load() error {
	segs, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	last, dmg, err := l.checkSegments(segs)
	if err != nil {
		return err
	}
	if dmg != nil {
		cerr := &CorruptionError{Segment: filepath.Base(segs[dmg.seg].path), Offset: dmg.offset, Pos: dmg.pos, Err: dmg.err}
		if !l.opts.Repair {
			return cerr
		}
		if segs, err = l.repair(segs, dmg); err != nil {
			return err
		}
		if last, dmg, err = l.checkSegments(segs); err != nil {
			return err
		}
		if dmg != nil {
			return fmt.Errorf("repair left damage: %w", cerr)
		}
	}
	if len(segs) == 0 {
		segs = []segment{{index: 1, path: filepath.Join(l.dir, segmentName(1))}}
	}
	if err := l.app.open(segs[len(segs)-1], last); err != nil {
		return fmt.Errorf("open: %w", err)
	}
	l.segs = segs
	l.first = segs[0].index
	l.last.Store(last)
	l.written = last
	l.cache.init(l.opts.CacheRecords, l.opts.CacheBytes)
	return nil
}

// Append makes records durable as consecutive log entries and returns the
// offsets of the first and the last. It returns only after the fsync that
// covers them, together with whatever other appends were pending (group
// commit). Append takes ownership of the record slices: the caller must not
// modify them afterwards; readers get them as they are.
//
// If ctx ends before the writer took the records, they are not written and
// ctx.Err() is returned; once taken, Append waits for the outcome of their
// fsync. A write or fsync failure returns an error wrapping ErrUnavailable
// and the cause; nothing of that commit is acknowledged. A call with no
// records returns zeros and no error.
func (l *Log) Append(ctx context.Context, records [][]byte) (first, last uint64, err error) {
	if len(records) == 0 {
		return 0, 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if err := l.lostErr(); err != nil {
		return 0, 0, err
	}
	r := &request{ctx: ctx, recs: records, done: make(chan struct{})}
	for _, rec := range records {
		r.bytes += len(rec)
	}
	l.qmu.Lock()
	if l.closing {
		l.qmu.Unlock()
		return 0, 0, ErrClosed
	}
	l.pending = append(l.pending, r)
	l.queued += r.bytes
	l.outstanding.Add(1)
	l.qmu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	select {
	case <-r.done:
		return r.first, r.last, r.err
	case <-ctx.Done():
	}
	l.qmu.Lock()
	if !r.taken {
		r.cancelled = true
		l.queued -= r.bytes
		l.outstanding.Add(-1)
		l.qmu.Unlock()
		return 0, 0, ctx.Err()
	}
	l.qmu.Unlock()
	<-r.done
	return r.first, r.last, r.err
}

// Writable returns nil when the log accepts appends. Otherwise it returns
// ErrClosed, or an error wrapping ErrUnavailable and the I/O error that
// keeps the log from its durable state, or ErrRemoved (for a readiness
// check).
func (l *Log) Writable() error {
	l.qmu.Lock()
	closing := l.closing
	l.qmu.Unlock()
	if closing {
		return ErrClosed
	}
	if err := l.lostErr(); err != nil {
		return err
	}
	if p := l.state.Load(); p != nil {
		return *p
	}
	return nil
}

// FirstOffset returns the offset of the first record in the log: 1 for a
// new log, later after TruncateFront.
func (l *Log) FirstOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.first
}

// LastOffset returns the offset of the last acknowledged record, 0 when the
// log never had one.
func (l *Log) LastOffset() uint64 { return l.last.Load() }

// Stats returns the log's offsets and size.
func (l *Log) Stats() Stats {
	l.mu.RLock()
	defer l.mu.RUnlock()
	st := Stats{FirstOffset: l.first, LastOffset: l.last.Load(), Segments: len(l.segs), Archived: l.archived.Load()}
	for _, s := range l.segs {
		st.Bytes += s.size
	}
	return st
}

// Close stops accepting appends, waits for the appends already queued to be
// committed and answered, fsyncs and closes the files. Later calls to Append,
// Read, Wait and TruncateFront return ErrClosed; waiting Wait calls return
// ErrClosed. Calling Close again returns nil.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.qmu.Lock()
		l.closing = true
		l.qmu.Unlock()
		close(l.quit)
		<-l.done
		l.truncMu.Lock()
		l.mu.Lock()
		l.closed = true
		close(l.notify)
		l.mu.Unlock()
		l.truncMu.Unlock()
		l.closeErr = l.app.close()
		if l.closeErr != nil {
			l.closeErr = fmt.Errorf("close: %w", l.closeErr)
		}
		l.closeErr = errors.Join(l.closeErr, l.lock.Close())
	})
	return l.closeErr
}
