package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/wal"
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
	ChunkDelay        time.Duration
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
	// MaxWALBytes refuses publishing with 429 while the log's segment files
	// hold more bytes; 0 means no bound.
	MaxWALBytes int64
	// MaxInflightPublish bounds the publish requests on the write path at
	// once; a request over it waits up to InflightWait (0: not at all) and
	// then gets 429.
	MaxInflightPublish int
	InflightWait       time.Duration

	// Access control: the tokens (resolved from the flags, the environment
	// or the token files) and whether /metrics stays open.
	Tokens      api.Tokens
	MetricsOpen bool

	// TLS: serve HTTPS with this certificate chain and key (PEM files).
	TLSCert string
	TLSKey  string

	// HTTP server.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
	MaxHeaderBytes    int
}

// defaultConfig returns the documented defaults.
// DefaultMaxLag bounds the consumer lag by default, so that the log, the
// buffer between publishers and the consumer, cannot grow without bound
// when publishers outrun the consumer for long: about 1.3 GiB of log with
// 256-byte payloads.
const DefaultMaxLag = 5_000_000

func defaultConfig() Config {
	return Config{
		Addr:               ":8080",
		DataDir:            "./data",
		LogFormat:          "text",
		LogLevel:           slog.LevelInfo,
		LockTimeout:        time.Second,
		MaxBodyBytes:       api.DefaultMaxBodyBytes,
		MaxBatchEvents:     api.DefaultMaxBatchEvents,
		MaxPayloadBytes:    api.DefaultMaxPayloadBytes,
		MaxPayloadDepth:    api.DefaultMaxPayloadDepth,
		MaxStatsTopics:     api.DefaultMaxStatsTopics,
		MaxInflightPublish: api.DefaultMaxInflightPublish,
		InflightWait:       api.DefaultInflightWait,
		MaxLag:             DefaultMaxLag,
		MaxHeaderBytes:     64 << 10,
		ReadHeaderTimeout:  10 * time.Second,
		ReadTimeout:        60 * time.Second,
		WriteTimeout:       60 * time.Second,
		IdleTimeout:        120 * time.Second,
		ShutdownTimeout:    20 * time.Second,
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
	e.int(&c.ChunkEntries, "chunk-entries", "AGG_CHUNK_ENTRIES", "events the consumer applies per index transaction (0: 16384)")
	e.duration(&c.ChunkDelay, "chunk-delay", "AGG_CHUNK_DELAY", "how long the consumer gathers appends into a chunk that is not full (0: 2ms)")
	e.duration(&c.LockTimeout, "lock-timeout", "AGG_LOCK_TIMEOUT", "wait for the index file lock before failing")

	e.int64(&c.MaxBodyBytes, "max-body-bytes", "AGG_MAX_BODY_BYTES", "request body limit (413 above)")
	e.int(&c.MaxBatchEvents, "max-batch-events", "AGG_MAX_BATCH_EVENTS", "events per request (413 above)")
	e.int(&c.MaxPayloadBytes, "max-payload-bytes", "AGG_MAX_PAYLOAD_BYTES", "bytes of one event's payload (422 above)")
	e.int(&c.MaxPayloadDepth, "max-payload-depth", "AGG_MAX_PAYLOAD_DEPTH", "nesting depth of one event's payload (422 above)")
	e.int(&c.MaxStatsTopics, "max-stats-topics", "AGG_MAX_STATS_TOPICS", "topics listed by GET /stats (the rest is flagged topics_truncated)")
	e.uint64(&c.MaxLag, "max-lag", "AGG_MAX_LAG", "answer 429 to publishers while the consumer is more events behind (0: no bound)")
	e.int64(&c.MaxWALBytes, "max-wal-bytes", "AGG_MAX_WAL_BYTES", "answer 429 to publishers while the log's segment files hold more bytes (0: no bound; else at least twice the segment size)")
	e.int(&c.MaxInflightPublish, "max-inflight-publish", "AGG_MAX_INFLIGHT_PUBLISH", "publish requests on the write path at once (read and validated, waiting for the log)")
	e.duration(&c.InflightWait, "inflight-wait", "AGG_INFLIGHT_WAIT", "how long a publish request waits for a free slot before 429 (0: not at all)")

	var tokens, tokenFiles [3]string // publish, read, admin
	for i, scope := range []string{"publish", "read", "admin"} {
		env := "AGG_" + strings.ToUpper(scope) + "_TOKEN"
		e.secret(&tokens[i], scope+"-token", env, "bearer token for "+tokenUse[i]+" (prefer the environment or --"+scope+"-token-file: flags show in ps)")
		e.str(&tokenFiles[i], scope+"-token-file", env+"_FILE", "file holding the "+scope+" token (surrounding whitespace is trimmed)")
	}
	e.bool(&c.MetricsOpen, "metrics-open", "AGG_METRICS_OPEN", "serve /metrics without a token even when reading needs one")
	e.str(&c.TLSCert, "tls-cert", "AGG_TLS_CERT", "serve HTTPS: PEM certificate chain file (with --tls-key)")
	e.str(&c.TLSKey, "tls-key", "AGG_TLS_KEY", "serve HTTPS: PEM private key file (with --tls-cert)")

	e.duration(&c.ReadHeaderTimeout, "read-header-timeout", "AGG_READ_HEADER_TIMEOUT", "time to read request headers")
	e.duration(&c.ReadTimeout, "read-timeout", "AGG_READ_TIMEOUT", "time to read a whole request")
	e.duration(&c.WriteTimeout, "write-timeout", "AGG_WRITE_TIMEOUT", "time to write a reply")
	e.duration(&c.IdleTimeout, "idle-timeout", "AGG_IDLE_TIMEOUT", "keep-alive idle time")
	e.duration(&c.ShutdownTimeout, "shutdown-timeout", "AGG_SHUTDOWN_TIMEOUT", "time for in-flight requests at shutdown")
	e.int(&c.MaxHeaderBytes, "max-header-bytes", "AGG_MAX_HEADER_BYTES", "request header limit (431 above)")

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
	var err error
	if c.Tokens, err = resolveTokens(tokens, tokenFiles); err != nil {
		return Config{}, err
	}
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
		"max stats topics": int64(c.MaxStatsTopics), "max wal bytes": c.MaxWALBytes,
		"max inflight publish": int64(c.MaxInflightPublish), "inflight wait": int64(c.InflightWait),
		"max header bytes": int64(c.MaxHeaderBytes),
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative", name, v))
		}
	}
	seg := int64(c.SegmentSize)
	if seg == 0 {
		seg = wal.DefaultSegmentSize
	}
	if c.MaxWALBytes > 0 && c.MaxWALBytes < 2*seg {
		// Retention frees whole segments behind the consumer, so the log
		// holds up to a segment even when the consumer is caught up.
		errs = append(errs, fmt.Errorf("max wal bytes %d: want 0 (no bound) or at least twice the segment size (%d)", c.MaxWALBytes, 2*seg))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls: --tls-cert and --tls-key go together"))
	}
	if err := c.Tokens.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tokenUse says what each token (publish, read, admin) is for.
var tokenUse = [3]string{"POST /publish", "GET /events, /stats, /metrics", "every route"}

// resolveTokens takes each token from its value or its file, not both.
func resolveTokens(values, files [3]string) (api.Tokens, error) {
	var errs []error
	names := [3]string{"publish", "read", "admin"}
	for i := range values {
		if files[i] == "" {
			continue
		}
		if values[i] != "" {
			errs = append(errs, fmt.Errorf("%s token: given both as a value and as a file", names[i]))
			continue
		}
		b, err := os.ReadFile(files[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s token file: %w", names[i], err))
			continue
		}
		if values[i] = strings.TrimSpace(string(b)); values[i] == "" {
			errs = append(errs, fmt.Errorf("%s token file %s is empty", names[i], files[i]))
		}
	}
	return api.Tokens{Publish: values[0], Read: values[1], Admin: values[2]}, errors.Join(errs...)
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

// secret is str for a value that --help must not print (its default
// may come from the environment).
func (e *envFlags) secret(p *string, name, env, usage string) {
	if v, ok := e.env(env); ok {
		*p = v
	}
	e.fs.Var((*secretValue)(p), name, usage+" [$"+env+"]")
}

// secretValue is a string flag whose String is always empty, so that the
// usage never shows it.
type secretValue string

func (s *secretValue) String() string     { return "" }
func (s *secretValue) Set(v string) error { *s = secretValue(v); return nil }

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
