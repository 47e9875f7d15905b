package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/natslog"
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

	// Cluster mode: the log is a JetStream stream on these NATS servers
	// instead of the local write-ahead log (docs/scale-out.md).
	NATSURL            string // comma-separated
	NATSStream         string
	NATSReplicas       int
	NATSMaxBytes       int64
	NATSMaxBatch       int
	NATSMaxInflight    int
	NATSPurgeInterval  time.Duration
	NATSPinTTL         time.Duration
	NATSConnectTimeout time.Duration

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
	MaxPageBytes    int // JSON bytes of the events of one page of /events or /feed
	// MaxTopics refuses (429) a request with an event of a new topic once
	// there are this many topics; 0 means no bound.
	MaxTopics int
	// MaxConsumers bounds the named cursors (/consumers).
	MaxConsumers int
	// ApplyWait is how long POST /publish?wait=applied waits for the
	// consumer before it answers 202.
	ApplyWait time.Duration
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
	// MaxInflightBodyBytes bounds the body buffers of all requests at
	// once (429 when a body would pass it).
	MaxInflightBodyBytes int64

	// CORSOrigins is a comma-separated list of the browser origins that
	// get CORS headers ("": CORS off). A string keeps Config comparable.
	CORSOrigins string

	// Access control: the tokens (resolved from the flags, the environment
	// or the token files) and whether /metrics stays open.
	Tokens      api.Tokens
	MetricsOpen bool

	// DebugAddr, when set, serves net/http/pprof on a listener of its own
	// (meant for 127.0.0.1: it is never behind the tokens).
	DebugAddr string

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

	// Data lifecycle: retention, dedup window, log archive (lifecycle.go).
	Lifecycle lifecycleConfig
}

// defaultConfig returns the documented defaults.
// DefaultMaxLag bounds the consumer lag by default, so that the log, the
// buffer between publishers and the consumer, cannot grow without bound
// when publishers outrun the consumer for long: about 1.3 GiB of log with
// 256-byte payloads.
const DefaultMaxLag = 5_000_000

// DefaultShutdownTimeout is below the 10 s that docker stop (and so a
// plain docker run or compose) waits before SIGKILL, leaving time to close
// the log and the index after the requests in flight.
const DefaultShutdownTimeout = 8 * time.Second

func defaultConfig() Config {
	return Config{
		Addr:                 ":8080",
		DataDir:              "./data",
		LogFormat:            "text",
		LogLevel:             slog.LevelInfo,
		LockTimeout:          time.Second,
		MaxBodyBytes:         api.DefaultMaxBodyBytes,
		MaxBatchEvents:       api.DefaultMaxBatchEvents,
		MaxPayloadBytes:      api.DefaultMaxPayloadBytes,
		MaxPayloadDepth:      api.DefaultMaxPayloadDepth,
		MaxStatsTopics:       api.DefaultMaxStatsTopics,
		MaxPageBytes:         api.DefaultMaxPageBytes,
		MaxConsumers:         dedup.DefaultMaxCursors,
		ApplyWait:            api.DefaultApplyWait,
		MaxInflightPublish:   api.DefaultMaxInflightPublish,
		InflightWait:         api.DefaultInflightWait,
		MaxInflightBodyBytes: api.DefaultMaxInflightBodyBytes,
		MaxLag:               DefaultMaxLag,
		NATSStream:           natslog.DefaultStream,
		NATSReplicas:         natslog.DefaultReplicas,
		NATSMaxBytes:         natslog.DefaultMaxBytes,
		NATSMaxBatch:         natslog.DefaultMaxBatch,
		NATSMaxInflight:      natslog.DefaultMaxInflight,
		NATSPurgeInterval:    natslog.DefaultPurgeInterval,
		NATSPinTTL:           natslog.DefaultPinTTL,
		NATSConnectTimeout:   natslog.DefaultConnectTimeout,
		MaxHeaderBytes:       64 << 10,
		ReadHeaderTimeout:    10 * time.Second,
		ReadTimeout:          60 * time.Second,
		WriteTimeout:         60 * time.Second,
		IdleTimeout:          120 * time.Second,
		ShutdownTimeout:      DefaultShutdownTimeout,
	}
}

// errVersion is returned by parseConfig after printing the version.
var errVersion = errors.New("version requested")

// noEnv are the flags without an environment variable.
var noEnv = map[string]bool{"version": true}

// parseConfig parses the command line; every flag falls back to its AGG_*
// environment variable (read through getenv), then to its default. For -h
// and --help it prints the usage to stdout and returns flag.ErrHelp; for
// --version it prints the version to stdout and returns errVersion.
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (Config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("aggregator", flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage) // printed only for --help; an error says it all
	level := strings.ToLower(c.LogLevel.String())
	expected := uint64(c.BloomExpectedKeys)
	var tokens, tokenFiles [3]string // publish, read, admin
	registerFlags(fs, &c, &level, &expected, &tokens, &tokenFiles)
	version := fs.Bool("version", false, "print the version and exit")
	fs.VisitAll(func(f *flag.Flag) {
		if !noEnv[f.Name] {
			f.Usage += " [$" + envName(f.Name) + "]"
		}
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: aggregator [flags]\n\n"+
			"A crash-safe HTTP event aggregator. Every flag falls back to the environment\n"+
			"variable named after it; a flag given on the command line wins.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = io.WriteString(stdout, usage.String())
		}
		return Config{}, err
	}
	if *version {
		_, _ = io.WriteString(stdout, versionText())
		return Config{}, errVersion
	}
	if err := applyEnv(fs, getenv); err != nil {
		return Config{}, err
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

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// versionText is what --version prints: the module version and the Go
// version the binary was built with, and the VCS revision when the build
// recorded one.
func versionText() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "aggregator (no build information)\n"
	}
	text := "aggregator " + bi.Main.Version + " " + bi.GoVersion
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		text += " revision " + rev
		if t := settings["vcs.time"]; t != "" {
			text += " " + t
		}
		if settings["vcs.modified"] == "true" {
			text += " (modified)"
		}
	}
	return text + "\n"
}

// envName is the environment variable of a flag: AGG_ and the flag's name
// in upper case with dashes as underscores (--data-dir: AGG_DATA_DIR).
func envName(flagName string) string {
	return "AGG_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyEnv sets every flag that the command line did not set from its
// environment variable, when that is set.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if noEnv[f.Name] {
			return
		}
		env := envName(f.Name)
		v := strings.TrimSpace(getenv(env))
		if given[f.Name] || v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("environment %s=%q: %w", env, v, err))
		}
	})
	return errors.Join(errs...)
}

// registerFlags defines the flags on fs, with c's values as defaults.
func registerFlags(fs *flag.FlagSet, c *Config, level *string, expected *uint64, tokens, tokenFiles *[3]string) {
	fs.StringVar(&c.Addr, "addr", c.Addr, "listen address (host:port)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory: <dir>/wal/ holds the log, <dir>/index.db the index")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(level, "log-level", *level, "log level: debug, info, warn or error")

	fs.IntVar(&c.SegmentSize, "segment-size", c.SegmentSize, "bytes per log segment file (0: 4 MiB)")
	fs.BoolVar(&c.WALRepair, "wal-repair", c.WALRepair, "cut the log at damage inside acknowledged records (copies the segment aside first)")

	fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, "cluster mode: the log is a JetStream stream on these NATS servers (nats://host:port, comma-separated) instead of <dir>/wal/")
	fs.StringVar(&c.NATSStream, "nats-stream", c.NATSStream, "cluster mode: the stream's name (created if absent)")
	fs.IntVar(&c.NATSReplicas, "nats-replicas", c.NATSReplicas, "cluster mode: replicas of the stream when it is created")
	fs.Int64Var(&c.NATSMaxBytes, "nats-max-bytes", c.NATSMaxBytes, "cluster mode: bytes the stream may hold (per replica); publishes get 429 above (-1: the servers' limit only)")
	fs.IntVar(&c.NATSMaxBatch, "nats-max-batch", c.NATSMaxBatch, "cluster mode: events per atomic batch, at most the servers' jetstream.limits.batch.max_msgs; larger requests are split")
	fs.IntVar(&c.NATSMaxInflight, "nats-max-inflight", c.NATSMaxInflight, "cluster mode: atomic batches this node has open at once (all nodes together below the servers' max_inflight_per_stream, 50)")
	fs.DurationVar(&c.NATSPurgeInterval, "nats-purge-interval", c.NATSPurgeInterval, "cluster mode: how often the node reports its checkpoint and purges the stream below every node's checkpoint (negative: never purge)")
	fs.DurationVar(&c.NATSPinTTL, "nats-pin-ttl", c.NATSPinTTL, "cluster mode: how long a GET /admin/backup holds the stream's records after its checkpoint, for the node restored from it")
	fs.DurationVar(&c.NATSConnectTimeout, "nats-connect-timeout", c.NATSConnectTimeout, "cluster mode: how long the start waits for the NATS cluster and the stream")

	fs.Uint64Var(expected, "bloom-expected-keys", *expected, "keys the bloom filter is sized for (0: 1,048,576)")
	fs.Float64Var(&c.BloomFPRate, "bloom-fp-rate", c.BloomFPRate, "bloom filter false-positive rate at the expected keys (0: 0.01)")
	fs.IntVar(&c.ChunkEntries, "chunk-entries", c.ChunkEntries, "events the consumer applies per index transaction (0: 16384)")
	fs.DurationVar(&c.ChunkDelay, "chunk-delay", c.ChunkDelay, "the least time between the consumer's index transactions while chunks are not full; the first append after a quiet spell is applied at once (0: 10ms)")
	fs.DurationVar(&c.LockTimeout, "lock-timeout", c.LockTimeout, "wait for the index file lock before failing")

	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "request body limit (413 above)")
	fs.IntVar(&c.MaxBatchEvents, "max-batch-events", c.MaxBatchEvents, "events per request (413 above)")
	fs.IntVar(&c.MaxPayloadBytes, "max-payload-bytes", c.MaxPayloadBytes, "bytes of one event's payload (422 above)")
	fs.IntVar(&c.MaxPayloadDepth, "max-payload-depth", c.MaxPayloadDepth, "nesting depth of one event's payload (422 above)")
	fs.IntVar(&c.MaxStatsTopics, "max-stats-topics", c.MaxStatsTopics, "topics listed by GET /stats (the rest is flagged topics_truncated; all at GET /topics)")
	fs.IntVar(&c.MaxPageBytes, "max-page-bytes", c.MaxPageBytes, "JSON bytes of the events of one page of /events or /feed (a page holds at least one event)")
	fs.IntVar(&c.MaxTopics, "max-topics", c.MaxTopics, "answer 429 to a request with an event of a new topic once there are this many topics (0: no bound)")
	fs.IntVar(&c.MaxConsumers, "max-consumers", c.MaxConsumers, "named cursors at most (PUT /consumers/{name})")
	fs.DurationVar(&c.ApplyWait, "apply-wait", c.ApplyWait, "how long POST /publish?wait=applied waits for the consumer before it answers 202")
	fs.Uint64Var(&c.MaxLag, "max-lag", c.MaxLag, "answer 429 to publishers while the consumer is more events behind (0: no bound)")
	fs.Int64Var(&c.MaxWALBytes, "max-wal-bytes", c.MaxWALBytes, "answer 429 to publishers while the log's segment files hold more bytes (0: no bound; else at least twice the segment size)")
	fs.IntVar(&c.MaxInflightPublish, "max-inflight-publish", c.MaxInflightPublish, "publish requests on the write path at once (read and validated, waiting for the log)")
	fs.DurationVar(&c.InflightWait, "inflight-wait", c.InflightWait, "how long a publish request waits for a free slot before 429 (0: not at all)")
	fs.Int64Var(&c.MaxInflightBodyBytes, "max-inflight-body-bytes", c.MaxInflightBodyBytes, "bytes of request bodies held in memory at once, all requests together (429 above; at least --max-body-bytes)")

	for i, scope := range []string{"publish", "read", "admin"} {
		fs.Var((*secretValue)(&tokens[i]), scope+"-token", "bearer token for "+tokenUse[i]+" (prefer the environment or --"+scope+"-token-file: flags show in ps)")
		fs.StringVar(&tokenFiles[i], scope+"-token-file", "", "file holding the "+scope+" token (surrounding whitespace is trimmed)")
	}
	fs.StringVar(&c.CORSOrigins, "cors-origin", c.CORSOrigins, "comma-separated browser origins (scheme://host[:port]) that get CORS headers (none: CORS off)")
	fs.BoolVar(&c.MetricsOpen, "metrics-open", c.MetricsOpen, "serve /metrics without a token even when reading needs one")
	fs.StringVar(&c.DebugAddr, "debug-addr", c.DebugAddr, "serve Go's pprof profiles on this address (e.g. 127.0.0.1:6060; no tokens there: keep it on loopback)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "serve HTTPS: PEM certificate chain file (with --tls-key)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "serve HTTPS: PEM private key file (with --tls-cert)")

	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", c.ReadHeaderTimeout, "time to read request headers")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", c.ReadTimeout, "time to read a whole request")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "time to write a reply")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "keep-alive idle time")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "time for in-flight requests at shutdown")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", c.MaxHeaderBytes, "request header limit (431 above)")
	registerLifecycleFlags(fs, &c.Lifecycle)
}

// secretValue is a string flag whose String is always empty, so that the
// usage never shows it.
type secretValue string

func (s *secretValue) String() string     { return "" }
func (s *secretValue) Set(v string) error { *s = secretValue(v); return nil }

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
		"max page bytes": int64(c.MaxPageBytes), "max topics": int64(c.MaxTopics),
		"max consumers": int64(c.MaxConsumers), "apply wait": int64(c.ApplyWait),
		"max inflight publish": int64(c.MaxInflightPublish), "inflight wait": int64(c.InflightWait),
		"max header bytes": int64(c.MaxHeaderBytes), "max inflight body bytes": c.MaxInflightBodyBytes,
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
	if c.MaxInflightBodyBytes > 0 && c.MaxInflightBodyBytes < c.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("max inflight body bytes %d: want at least max body bytes (%d), or no body of that size could be received",
			c.MaxInflightBodyBytes, c.MaxBodyBytes))
	}
	for _, o := range splitList(c.CORSOrigins) {
		if why := api.ValidOrigin(o); why != "" {
			errs = append(errs, fmt.Errorf("cors origin %q: %s", o, why))
		}
	}
	if c.NATSURL != "" {
		if c.WALRepair {
			errs = append(errs, errors.New("--wal-repair has no meaning with --nats-url (there is no local log)"))
		}
		if c.NATSReplicas < 1 || c.NATSMaxBatch < 1 || c.NATSMaxInflight < 1 {
			errs = append(errs, errors.New("--nats-replicas, --nats-max-batch and --nats-max-inflight must be at least 1"))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls: --tls-cert and --tls-key go together"))
	}
	if err := c.Tokens.Validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.Lifecycle.validate()...)
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
