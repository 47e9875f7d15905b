package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/api"
)

// Config is everything the server can be told. Zero numeric fields mean the
// defaults of the package they configure.
type Config struct {
	Addr      string
	DataDir   string
	LogFormat string // text or json
	LogLevel  slog.Level

	// Write-ahead log.
	SegmentSize int
	WALRepair   bool

	// Index and consumer.
	BloomExpectedKeys uint
	BloomFPRate       float64
	ChunkEntries      int
	LockTimeout       time.Duration

	// API limits.
	MaxBodyBytes    int64
	MaxBatchEvents  int
	MaxPayloadBytes int
	MaxPayloadDepth int
	MaxStatsTopics  int
	// MaxLag refuses publishing with 429 while the consumer is more than
	// this many events behind the log; 0 means no bound.
	MaxLag uint64

	// HTTP server.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
}

// defaultConfig returns the documented defaults.
func defaultConfig() Config {
	return Config{
		Addr:              ":8080",
		DataDir:           "./data",
		LogFormat:         "text",
		LogLevel:          slog.LevelInfo,
		LockTimeout:       time.Second,
		MaxBodyBytes:      api.DefaultMaxBodyBytes,
		MaxBatchEvents:    api.DefaultMaxBatchEvents,
		MaxPayloadBytes:   api.DefaultMaxPayloadBytes,
		MaxPayloadDepth:   api.DefaultMaxPayloadDepth,
		MaxStatsTopics:    api.DefaultMaxStatsTopics,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ShutdownTimeout:   20 * time.Second,
	}
}

// parseConfig parses the command line; every flag falls back to its AGG_*
// environment variable (read through getenv), then to its default. It
// returns flag.ErrHelp after printing the usage for -h and --help.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("aggregator", flag.ContinueOnError)
	fs.SetOutput(out)
	e := &envFlags{fs: fs, getenv: getenv}

	e.str(&c.Addr, "addr", "AGG_ADDR", "listen address (host:port)")
	e.str(&c.DataDir, "data-dir", "AGG_DATA_DIR", "data directory: <dir>/wal/ holds the log, <dir>/index.db the index")
	e.str(&c.LogFormat, "log-format", "AGG_LOG_FORMAT", "log format: text or json")
	level := strings.ToLower(c.LogLevel.String())
	e.str(&level, "log-level", "AGG_LOG_LEVEL", "log level: debug, info, warn or error")

	e.int(&c.SegmentSize, "segment-size", "AGG_SEGMENT_SIZE", "bytes per log segment file (0: 16 MiB)")
	e.bool(&c.WALRepair, "wal-repair", "AGG_WAL_REPAIR", "cut the log at damage inside acknowledged records (copies the segment aside first)")

	expected := uint64(c.BloomExpectedKeys)
	e.uint64(&expected, "bloom-expected-keys", "AGG_BLOOM_EXPECTED_KEYS", "keys the bloom filter is sized for (0: 1,048,576)")
	e.float(&c.BloomFPRate, "bloom-fp-rate", "AGG_BLOOM_FP_RATE", "bloom filter false-positive rate at the expected keys (0: 0.01)")
	e.int(&c.ChunkEntries, "chunk-entries", "AGG_CHUNK_ENTRIES", "events the consumer applies per index transaction (0: 8192)")
	e.duration(&c.LockTimeout, "lock-timeout", "AGG_LOCK_TIMEOUT", "wait for the index file lock before failing")

	e.int64(&c.MaxBodyBytes, "max-body-bytes", "AGG_MAX_BODY_BYTES", "request body limit (413 above)")
	e.int(&c.MaxBatchEvents, "max-batch-events", "AGG_MAX_BATCH_EVENTS", "events per request (413 above)")
	e.int(&c.MaxPayloadBytes, "max-payload-bytes", "AGG_MAX_PAYLOAD_BYTES", "bytes of one event's payload (422 above)")
	e.int(&c.MaxPayloadDepth, "max-payload-depth", "AGG_MAX_PAYLOAD_DEPTH", "nesting depth of one event's payload (422 above)")
	e.int(&c.MaxStatsTopics, "max-stats-topics", "AGG_MAX_STATS_TOPICS", "topics listed by GET /stats (the rest is flagged topics_truncated)")
	e.uint64(&c.MaxLag, "max-lag", "AGG_MAX_LAG", "answer 429 to publishers while the consumer is more events behind (0: no bound)")

	e.duration(&c.ReadHeaderTimeout, "read-header-timeout", "AGG_READ_HEADER_TIMEOUT", "time to read request headers")
	e.duration(&c.ReadTimeout, "read-timeout", "AGG_READ_TIMEOUT", "time to read a whole request")
	e.duration(&c.WriteTimeout, "write-timeout", "AGG_WRITE_TIMEOUT", "time to write a reply")
	e.duration(&c.IdleTimeout, "idle-timeout", "AGG_IDLE_TIMEOUT", "keep-alive idle time")
	e.duration(&c.ShutdownTimeout, "shutdown-timeout", "AGG_SHUTDOWN_TIMEOUT", "time for in-flight requests at shutdown")

	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: aggregator [flags]\n\n"+
			"A crash-safe HTTP event aggregator. Every flag falls back to the environment\n"+
			"variable named after it; a flag given on the command line wins.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if len(e.errs) > 0 {
		return Config{}, errors.Join(e.errs...)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.BloomExpectedKeys = uint(expected)
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return Config{}, fmt.Errorf("log level: %w", err)
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("addr is empty"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is empty"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log format %q: want text or json", c.LogFormat))
	}
	if c.BloomFPRate < 0 || c.BloomFPRate > 0.5 {
		errs = append(errs, fmt.Errorf("bloom fp rate %v: want 0 (default) or in (0, 0.5]", c.BloomFPRate))
	}
	for name, v := range map[string]int64{
		"segment size": int64(c.SegmentSize), "chunk entries": int64(c.ChunkEntries),
		"max body bytes": c.MaxBodyBytes, "max batch events": int64(c.MaxBatchEvents),
		"max payload bytes": int64(c.MaxPayloadBytes), "max payload depth": int64(c.MaxPayloadDepth),
		"max stats topics": int64(c.MaxStatsTopics),
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative", name, v))
		}
	}
	return errors.Join(errs...)
}

// envFlags registers flags whose default comes from an environment
// variable when it is set.
type envFlags struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
}

func (e *envFlags) env(name string) (string, bool) {
	v := strings.TrimSpace(e.getenv(name))
	return v, v != ""
}

func (e *envFlags) bad(env, v string, err error) {
	e.errs = append(e.errs, fmt.Errorf("environment %s=%q: %w", env, v, err))
}

func (e *envFlags) str(p *string, name, env, usage string) {
	if v, ok := e.env(env); ok {
		*p = v
	}
	e.fs.StringVar(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) bool(p *bool, name, env, usage string) {
	if v, ok := e.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = b
	}
	e.fs.BoolVar(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) int(p *int, name, env, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = n
	}
	e.fs.IntVar(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) int64(p *int64, name, env, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = n
	}
	e.fs.Int64Var(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) uint64(p *uint64, name, env, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = n
	}
	e.fs.Uint64Var(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) float(p *float64, name, env, usage string) {
	if v, ok := e.env(env); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = f
	}
	e.fs.Float64Var(p, name, *p, usage+" [$"+env+"]")
}

func (e *envFlags) duration(p *time.Duration, name, env, usage string) {
	if v, ok := e.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.bad(env, v, err)
		}
		*p = d
	}
	e.fs.DurationVar(p, name, *p, usage+" [$"+env+"]")
}
