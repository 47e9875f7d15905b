package dedup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/bits-and-blooms/bloom/v3"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Defaults used for zero Options fields.
const (
	// DefaultExpectedKeys is the number of keys the bloom filter is sized for
	// when Options.ExpectedKeys is 0.
	DefaultExpectedKeys = 1 << 20
	// DefaultFalsePositiveRate is the bloom filter's target false-positive
	// rate when Options.FalsePositiveRate is 0.
	DefaultFalsePositiveRate = 0.01
	// DefaultLockTimeout is how long Open waits for the database file lock
	// when Options.LockTimeout is 0.
	DefaultLockTimeout = time.Second
)

// formatVersion is stored in the meta bucket; Open refuses other versions.
// 1 was the seen set as one B+tree; 2 the seen set as sorted runs of key
// blocks with the events clustered per topic by time; 3 gives every unique
// event a seq: the events keyed by seq, per-topic indexes by seq and by
// time, and the seen set's keys carry the seq they were stored with.
const formatVersion = 3

// Bucket names and meta keys.
var (
	bucketSeen      = []byte("seen")      // nested buckets: the runs of the seen set
	bucketRuns      = []byte("runs")      // run id -> number of keys
	bucketEvents    = []byte("events")    // seq -> event value (see keys.go)
	bucketBySeq     = []byte("byseq")     // nested per topic: seq -> ordinal of the event in its topic
	bucketByTime    = []byte("bytime")    // nested per topic: idx key (timestamp, offset) -> seq
	bucketTopics    = []byte("topics")    // topic -> unique events (lifetime)
	bucketConsumers = []byte("consumers") // named cursor -> acked seq and topic
	bucketMeta      = []byte("meta")

	metaVersion    = []byte("version")
	metaCheckpoint = []byte("checkpoint")
	metaUnique     = []byte("unique") // = the last seq given
	metaDuplicates = []byte("duplicates")
	metaMalformed  = []byte("malformed")
	metaNextRun    = []byte("nextrun")
	metaTopics     = []byte("topics") // topics with a stored event (lifetime)
)

// allBuckets are the top-level buckets of the format.
var allBuckets = [][]byte{bucketSeen, bucketRuns, bucketEvents, bucketBySeq, bucketByTime, bucketTopics,
	bucketConsumers, bucketMeta}

var (
	// ErrClosed is returned by Apply, List and Stats after Close.
	ErrClosed = errors.New("dedup: closed")
	// ErrLocked is returned by Open when another process holds the database
	// file lock for longer than Options.LockTimeout.
	ErrLocked = errors.New("dedup: database locked")
	// ErrFormat is returned (wrapped, by a *FormatError when the file names
	// its version) by Open when the database was written in a format this
	// version does not understand.
	ErrFormat = errors.New("dedup: unsupported database format")
	// ErrOutOfOrder is returned by Apply when the entries above the checkpoint
	// are not consecutive offsets starting at Checkpoint()+1.
	ErrOutOfOrder = errors.New("dedup: entries out of order")
)

// FormatError is returned by Open for a database of another format
// version; it matches ErrFormat. Version 2 (the previous release) is
// converted by Upgrade.
type FormatError struct {
	Path    string
	Version uint64 // the version the file holds
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("dedup: %s holds index format %d, this version reads format %d", e.Path, e.Version, formatVersion)
}

func (e *FormatError) Unwrap() error { return ErrFormat }

// FormatVersion is the format of the index files this version writes.
const FormatVersion = formatVersion

// Options configure a Store. A nil *Options, or a zero field, means the
// documented default.
type Options struct {
	// ExpectedKeys is the number of distinct keys the bloom filter is sized
	// for (default DefaultExpectedKeys). When more keys are stored, the filter
	// is rebuilt with twice the stored keys.
	ExpectedKeys uint
	// FalsePositiveRate is the target false-positive rate of the bloom filter
	// at ExpectedKeys keys (default DefaultFalsePositiveRate; valid range
	// (0, 0.5]).
	FalsePositiveRate float64
	// LockTimeout bounds the wait for the database file lock (default
	// DefaultLockTimeout); when it passes Open fails with ErrLocked.
	LockTimeout time.Duration
	// Logger receives operational messages (nil discards them).
	Logger *slog.Logger

	// Registerer, when set, gets the index's metrics (aggregator_dedup_keys,
	// aggregator_topics, aggregator_consumer_checkpoint,
	// aggregator_events_expired).
	Registerer prometheus.Registerer

	// Retention is the default retention of every topic (zero: every event
	// is kept); SetRetention gives a topic its own. See retention.go.
	Retention event.Retention
	// DedupWindow, when positive, lets the seen set forget keys applied
	// longer ago than it, so that its size is bounded (see window.go for
	// what it promises); zero remembers every key for good.
	DedupWindow time.Duration
	// ExpireBatch bounds the events one maintenance step expires (default
	// DefaultExpireBatch).
	ExpireBatch int
	// ReadOnly opens the database read-only, beside other readers, for
	// checks: Apply and every other writer fail, and Close writes no
	// filter snapshot. The database must exist.
	ReadOnly bool

	// Test hooks, set by this package's tests and benchmarks.
	//
	// failCommit is called inside every Apply transaction just before the
	// commit, and a non-nil error aborts the transaction as a failed write
	// would (return syscall.ENOSPC to act like a full disk); Apply then
	// returns the error wrapped.
	failCommit    func() error
	noSync        bool                               // skip fdatasync (benchmark fixtures only)
	blockTarget   int                                // key bytes per seen-set block (default defaultBlockTarget)
	fanout        int                                // runs merged together (default defaultFanout)
	maxMergeKeys  int                                // keys of the largest merged run (default defaultMaxMergeKeys)
	rebuildBatch  int                                // keys between two calls of onRebuildStep
	onRebuildStep func(scanned int, grow bool) error // called after each rebuild batch
}

// Stats is a snapshot of the durable counters and of the bloom filter.
type Stats struct {
	Unique          uint64  // unique events stored (= Keys)
	Duplicates      uint64  // entries dropped as duplicates
	Malformed       uint64  // entries skipped as invalid (empty or oversized topic/event ID, undecodable record)
	Expired         uint64  // unique events removed by retention (lifetime)
	Stored          uint64  // unique events still stored (= Unique - Expired)
	FirstSeq        uint64  // seq of the oldest stored event; LastSeq+1 when none is stored
	Forgotten       uint64  // keys the dedup window dropped from the seen set (lifetime)
	Checkpoint      uint64  // last applied log offset; Unique+Duplicates+Malformed when the log starts at 1
	LastSeq         uint64  // seq of the last unique event (= Unique)
	TopicCount      uint64  // topics with at least one unique event (Topics lists them)
	Keys            uint64  // keys in the seen set (= Unique - Forgotten)
	SeenRuns        int     // sorted runs the seen set is split into
	RunFilterBits   uint64  // bits of the per-run bloom filters, together
	BloomBits       uint64  // size of the front bloom filter in bits
	BloomK          uint64  // hash functions of every filter
	BloomFPEstimate float64 // analytic false-positive rate at the current number of keys
}

// Store is the deduplicating index. Apply is serialised internally; List,
// Stats and Checkpoint may run concurrently with it.
type Store struct {
	db     *bolt.DB
	logger *slog.Logger
	opts   Options
	fpRate float64
	k      uint // hash functions of every filter

	applyMu    sync.Mutex // serialises Apply and the start of a rebuild
	checkpoint atomic.Uint64
	keys       atomic.Uint64 // stored keys (= unique); written under applyMu
	lastSeq    atomic.Uint64 // seq of the last unique event; written under applyMu
	topics     atomic.Uint64 // topics with a stored event; written under applyMu
	runs       []runInfo     // runs of the seen set, oldest first; guarded by applyMu
	nextRun    uint64        // id of the next run; guarded by applyMu
	bloom      *guardedFilter
	growing    atomic.Bool   // a bloom rebuild is running
	runBits    atomic.Uint64 // bits of the run filters (for Stats)
	frontAdded atomic.Uint64 // keys added to the front filter since it was built

	// Lifecycle (retention.go, window.go).
	expired     atomic.Uint64                      // events expired (lifetime)
	firstSeq    atomic.Uint64                      // oldest stored seq, lastSeq+1 when none
	forgotten   atomic.Uint64                      // keys dropped by the dedup window (lifetime)
	lastApplied int64                              // apply time of the last chunk; guarded by applyMu
	overrides   map[string]event.RetentionOverride // guarded by applyMu
	expireNext  []byte                             // topic the next expiry step starts at; guarded by applyMu

	verdicts verdictRing // what the recent entries were: new or duplicate, and their seq
	applied  notifier    // bumped after every commit
	urgency  urgency     // WaitCheckpoint callers, which cut the consumer's pacing short
	now      func() time.Time

	onListSteps func(steps int) // test seam: cursor moves of each List
	filtersFrom string          // "snapshot" or "scan": how Open got the filters

	closeOnce sync.Once
	closed    atomic.Bool
	stop      chan struct{} // closed by Close; stops a running rebuild
	wg        sync.WaitGroup
	closeErr  error
}

// Open opens or creates the index database at path, checks its format, and
// makes the bloom filters ready before returning, so the Store is ready for
// Apply: from the snapshot the last Close wrote when it covers the current
// checkpoint, else by scanning the stored keys (after a crash).
func Open(path string, opts *Options) (*Store, error) {
	o := opts.withDefaults()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: o.LockTimeout,
		// The freelist is written at every commit (small: runs free their
		// pages only when merged). NoFreelistSync would make Open walk every
		// page of the file to rebuild it: seconds at 1M events on a cold cache.
		FreelistType:    bolt.FreelistMapType,
		NoSync:          o.noSync,
		ReadOnly:        o.ReadOnly,
		InitialMmapSize: mmapSize(path, o.ReadOnly),
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &Store{db: db, logger: o.Logger, opts: o, fpRate: o.FalsePositiveRate, stop: make(chan struct{}), now: time.Now,
		overrides: map[string]event.RetentionOverride{}}
	s.verdicts.init(verdictRingSize)
	s.applied.init()
	_, s.k = bloom.EstimateParameters(DefaultExpectedKeys, o.FalsePositiveRate)
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	start := time.Now()
	if err := s.loadFilters(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.registerMetrics(o.Registerer); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.logger.Info("dedup: index open", "path", path, "checkpoint", s.Checkpoint(), "keys", s.keys.Load(),
		"runs", len(s.runs), "bloom_bits", s.bloom.f.Cap(), "filters_from", s.filtersFrom, "filters_took", time.Since(start))
	return s, nil
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.ExpectedKeys == 0 {
		r.ExpectedKeys = DefaultExpectedKeys
	}
	if r.FalsePositiveRate <= 0 || r.FalsePositiveRate > 0.5 {
		r.FalsePositiveRate = DefaultFalsePositiveRate
	}
	if r.LockTimeout <= 0 {
		r.LockTimeout = DefaultLockTimeout
	}
	if r.fanout < 2 {
		r.fanout = defaultFanout
	}
	if r.maxMergeKeys <= 0 {
		r.maxMergeKeys = defaultMaxMergeKeys
	}
	if r.blockTarget <= 0 {
		r.blockTarget = defaultBlockTarget
	}
	if r.rebuildBatch <= 0 {
		r.rebuildBatch = 64 << 10
	}
	if r.ExpireBatch <= 0 {
		r.ExpireBatch = DefaultExpireBatch
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	return r
}

// loadFilters makes the bloom filters ready: from the snapshot the last Close
// wrote when it covers the current checkpoint, else by scanning the seen set.
func (s *Store) loadFilters() error {
	f, capacity, ok := s.loadSnapshot()
	s.filtersFrom = "snapshot"
	if !ok {
		s.filtersFrom = "scan"
		capacity = max(s.opts.ExpectedKeys, uint(s.keys.Load())*2)
		var scanned int
		var err error
		if f, scanned, err = s.openFilters(capacity); err != nil {
			return fmt.Errorf("build bloom filter: %w", err)
		}
		if uint64(scanned) != s.keys.Load() {
			return fmt.Errorf("build bloom filter: %d seen keys but %d unique events counted", scanned, s.keys.Load())
		}
	}
	s.bloom = newGuardedFilter(f, capacity)
	s.frontAdded.Store(uint64(f.ApproximatedSize()))
	s.setRunBits()
	return nil
}

// registerMetrics registers the index's gauges on reg (nil: none). They read
// counters kept in memory: a scrape costs the same whatever the number of
// stored events or topics.
func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	for _, c := range []prometheus.Collector{
		gauge("aggregator_dedup_keys", "Keys in the deduplication index.",
			func() float64 { return float64(s.keys.Load()) }),
		gauge("aggregator_topics", "Topics with at least one unique event.",
			func() float64 { return float64(s.topics.Load()) }),
		gauge("aggregator_consumer_checkpoint", "Offset of the last event applied to the index.",
			func() float64 { return float64(s.checkpoint.Load()) }),
		gauge("aggregator_events_expired", "Unique events removed by retention (lifetime).",
			func() float64 { return float64(s.expired.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// init creates the buckets of a new database or checks an existing one, and
// loads the checkpoint and key count.
func (s *Store) init() error {
	// An existing database is only read: no write transaction (and no two
	// fdatasyncs) at every start.
	fresh := false
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			fresh = true
			return nil
		}
		return s.load(tx)
	})
	if err != nil || !fresh {
		return err
	}
	if s.opts.ReadOnly {
		return fmt.Errorf("%w: no index in the file", ErrFormat)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		if meta.Get(metaVersion) == nil {
			if err := meta.Put(metaVersion, putU64(formatVersion)); err != nil {
				return fmt.Errorf("write version: %w", err)
			}
		}
		return s.load(tx)
	})
}

// load checks the format and reads the checkpoint, counters, runs and
// retention overrides.
func (s *Store) load(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(metaVersion); u64(v) != formatVersion {
		return &FormatError{Path: s.db.Path(), Version: u64(v)}
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrFormat, name)
		}
	}
	unique, forgotten := u64(meta.Get(metaUnique)), u64(meta.Get(metaForgotten))
	if forgotten > unique {
		return fmt.Errorf("%w: %d keys forgotten of %d", ErrFormat, forgotten, unique)
	}
	s.checkpoint.Store(u64(meta.Get(metaCheckpoint)))
	s.keys.Store(unique - forgotten)
	s.lastSeq.Store(unique)
	s.expired.Store(u64(meta.Get(metaExpired)))
	s.forgotten.Store(forgotten)
	s.firstSeq.Store(unique + 1)
	if k, _ := tx.Bucket(bucketEvents).Cursor().First(); k != nil {
		s.firstSeq.Store(u64(k))
	}
	if k, v := tx.Bucket(bucketEvents).Cursor().Last(); k != nil {
		if _, at, err := decodeEventValue(u64(k), v); err == nil {
			s.lastApplied = at
		}
	}
	if v := meta.Get(metaTopics); v != nil {
		s.topics.Store(u64(v))
	} else { // written by a version before the counter was kept
		s.topics.Store(uint64(tx.Bucket(bucketTopics).Stats().KeyN))
	}
	s.nextRun = u64(meta.Get(metaNextRun))
	var err error
	if s.overrides, err = loadOverrides(tx); err != nil {
		return err
	}
	s.runs, err = loadRuns(tx, s.now().UnixNano())
	return err
}

// mmapHeadroom is what Open maps beyond the file's size. A writer that
// grows the file past the map must remap it, which waits for every read
// transaction to end: with the headroom, a long one (a backup, see
// Backup) holds the consumer up only if the file grows by more than the
// headroom meanwhile. The map is address space, not memory.
const mmapHeadroom = 1 << 30

// mmapSize returns the initial map size for the file at path: its size
// and as much again, at least mmapHeadroom more.
func mmapSize(path string, readOnly bool) int {
	if readOnly {
		return 0
	}
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	return int(size + max(size, mmapHeadroom))
}

// Checkpoint returns the last log offset whose effects are committed (0 for
// a new store).
func (s *Store) Checkpoint() uint64 { return s.checkpoint.Load() }

// Stats reads the durable counters in one short read transaction and adds the
// bloom filter's sizes. Its cost does not grow with the stored events or
// topics.
func (s *Store) Stats() (Stats, error) {
	if s.closed.Load() {
		return Stats{}, ErrClosed
	}
	var st Stats
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.Checkpoint = u64(meta.Get(metaCheckpoint))
		st.Unique = u64(meta.Get(metaUnique))
		st.Duplicates = u64(meta.Get(metaDuplicates))
		st.Malformed = u64(meta.Get(metaMalformed))
		st.Expired = u64(meta.Get(metaExpired))
		st.Forgotten = u64(meta.Get(metaForgotten))
		st.Stored = st.Unique - min(st.Expired, st.Unique)
		st.FirstSeq = st.Unique + 1
		if k, _ := tx.Bucket(bucketEvents).Cursor().First(); k != nil {
			st.FirstSeq = u64(k)
		}
		runs, err := loadRuns(tx, 0)
		if err != nil {
			return err
		}
		for _, r := range runs {
			st.Keys += r.n
		}
		st.SeenRuns = len(runs)
		st.LastSeq = st.Unique
		st.TopicCount = s.topicCount(meta)
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return Stats{}, ErrClosed
		}
		return Stats{}, fmt.Errorf("read stats: %w", err)
	}
	st.BloomBits, st.BloomK, st.BloomFPEstimate = s.bloom.sizes(st.Keys)
	st.RunFilterBits = s.runBits.Load()
	return st, nil
}

// topicCount is the topic count as of the transaction that meta is of:
// the counter it holds, or (an index written before the counter was kept)
// the in-memory count.
func (s *Store) topicCount(meta *bolt.Bucket) uint64 {
	if v := meta.Get(metaTopics); v != nil {
		return u64(v)
	}
	return s.topics.Load()
}

// Close stops a running bloom rebuild, waits for it and for a running Apply,
// writes the filter snapshot (so the next Open needs no scan; a failure to
// write it is logged, not returned) and closes the database. Calling Close
// again returns the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		s.applied.close()
		s.applyMu.Lock() // wait for a running Apply; none starts a rebuild after this
		defer s.applyMu.Unlock()
		s.wg.Wait()
		if !s.opts.ReadOnly { // read-only: nothing was applied, nothing to snapshot
			if err := s.writeSnapshot(); err != nil {
				// Not fatal: the next Open scans the seen set instead.
				s.logger.Warn("dedup: write filter snapshot", "err", err)
			}
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close index: %w", err)
		}
	})
	return s.closeErr
}

// setRunBits publishes the size of the run filters; the caller holds
// applyMu or has the Store to itself.
func (s *Store) setRunBits() {
	var bits uint64
	for _, r := range s.runs {
		bits += uint64(r.f.Cap())
	}
	s.runBits.Store(bits)
}
