// Package api is the HTTP interface of the aggregator: POST /publish, GET
// /events, GET /stats, the health probes and the Prometheus metrics.
//
// The package validates and decodes requests and maps errors to HTTP statuses
// in one place (StatusOf, by the kinds of event.Kind). It checks optional bearer tokens (Tokens) and
// bounds the publish requests handed to the storage at once
// (Options.MaxInflightPublish); a request is read and validated in full
// before it takes a slot. Storage is behind the small Backend interface, so
// api never imports the write-ahead log or the index; cmd/aggregator wires the
// real ones in and the tests of this package use a fake.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// Backend is the storage behind the API.
type Backend interface {
	// Publish makes events durable and returns the log offsets of the first
	// and the last one. It returns only after they are durable, or with an
	// error and none of them acknowledged. The events (and their Payload
	// bytes) belong to the caller and are reused after Publish returns: a
	// Backend that keeps them must copy them.
	Publish(ctx context.Context, events []event.Event) (first, last uint64, err error)
	// List returns one page of unique events; a bad cursor is an error
	// wrapping event.ErrBadCursor.
	List(ctx context.Context, q event.ListQuery) (event.Page, error)
	// Stats returns the lifetime counters.
	Stats(ctx context.Context) (Stats, error)
	// Ready returns nil when the service accepts writes and serves reads,
	// else the reason.
	Ready(ctx context.Context) error
}

// Stats are the counters of GET /stats. They are lifetime counters: they
// survive a restart.
type Stats struct {
	Received    uint64            // events acknowledged by POST /publish
	Unique      uint64            // events the index kept
	Duplicates  uint64            // events the index dropped as duplicates
	TopicCounts map[string]uint64 // unique events per topic
	WAL         WALStats
	Dedup       DedupStats
}

// WALStats describe the write-ahead log and how far the consumer is behind.
type WALStats struct {
	FirstOffset uint64 `json:"first_offset"`
	LastOffset  uint64 `json:"last_offset"`
	Checkpoint  uint64 `json:"checkpoint"`
	Lag         uint64 `json:"lag"`
	Segments    int    `json:"segments"`
	Bytes       int64  `json:"bytes"`
}

// DedupStats describe the deduplication index.
type DedupStats struct {
	Keys            uint64  `json:"keys"`
	BloomBits       uint64  `json:"bloom_bits"`
	BloomFPEstimate float64 `json:"bloom_fp_estimate"`
}

// Defaults of Options.
const (
	DefaultMaxBodyBytes    = 8 << 20
	DefaultMaxBatchEvents  = 10_000
	DefaultMaxPayloadBytes = 1 << 20
	DefaultMaxPayloadDepth = 32
	DefaultMaxStatsTopics  = 10_000
	DefaultRetryAfter      = time.Second
	// DefaultMaxInflightPublish bounds the publish requests that have read
	// and validated their body and are handed to the Backend at once.
	DefaultMaxInflightPublish = 256
	// DefaultInflightWait is how long a publish request waits for a free
	// slot before it is refused with 429.
	DefaultInflightWait = 250 * time.Millisecond
	// DefaultMaxInflightBodyBytes bounds the body buffers of all requests
	// together (see Options.MaxInflightBodyBytes).
	DefaultMaxInflightBodyBytes = 256 << 20
	// maxDetails bounds the details of one error reply.
	maxDetails = 100
)

// Options configure a Handler. The zero value (or nil) means the defaults.
type Options struct {
	Logger  *slog.Logger // nil: discard
	Metrics *Metrics     // nil: NewMetrics on a registry of its own

	MaxBodyBytes    int64         // request body limit (413 above); default 8 MiB
	MaxBatchEvents  int           // events per request (413 above); default 10,000
	MaxPayloadBytes int           // bytes of one payload (422 above); default 1 MiB
	MaxPayloadDepth int           // nesting of one payload (422 above); default 32
	MaxStatsTopics  int           // topics listed by GET /stats; default 10,000
	RetryAfter      time.Duration // Retry-After of 429 and 503; default 1s

	// MaxInflightPublish bounds the publish requests inside Backend.Publish
	// at once (default DefaultMaxInflightPublish). A request takes a slot
	// only after its body is read and validated, so a slow sender never
	// holds one. Over the bound a request waits up to InflightWait (default
	// DefaultInflightWait; negative: not at all) and is then refused with
	// 429 and Retry-After, having written nothing.
	MaxInflightPublish int
	InflightWait       time.Duration

	// MaxInflightBodyBytes bounds the bytes of the body buffers of all
	// publish requests at once (default DefaultMaxInflightBodyBytes;
	// raised to MaxBodyBytes if lower). A buffer grows with the bytes that
	// arrive, so a request that has sent only its headers holds a few KiB,
	// whatever its Content-Length; a request whose next growth would pass
	// the bound is refused at once with 429 and Retry-After (and the
	// connection closed), having written nothing.
	MaxInflightBodyBytes int64

	// CORSOrigins are the origins (scheme://host[:port]) whose browser
	// requests get CORS headers; none by default. A preflight (OPTIONS
	// with Access-Control-Request-Method) from a listed origin is answered
	// 204.
	CORSOrigins []string

	// Tokens protect the routes with bearer tokens (see Tokens); the zero
	// value leaves every route open. MetricsOpen leaves GET /metrics open
	// even when reading is protected.
	Tokens      Tokens
	MetricsOpen bool
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics, _ = NewMetrics(nil) // a new registry: registration cannot collide
	}
	if r.MaxBodyBytes <= 0 {
		r.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if r.MaxBatchEvents <= 0 {
		r.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if r.MaxPayloadBytes <= 0 {
		r.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if r.MaxPayloadDepth <= 0 {
		r.MaxPayloadDepth = DefaultMaxPayloadDepth
	}
	if r.MaxStatsTopics <= 0 {
		r.MaxStatsTopics = DefaultMaxStatsTopics
	}
	if r.RetryAfter <= 0 {
		r.RetryAfter = DefaultRetryAfter
	}
	if r.MaxInflightPublish <= 0 {
		r.MaxInflightPublish = DefaultMaxInflightPublish
	}
	if r.InflightWait == 0 {
		r.InflightWait = DefaultInflightWait
	}
	if r.MaxInflightBodyBytes <= 0 {
		r.MaxInflightBodyBytes = DefaultMaxInflightBodyBytes
	}
	r.MaxInflightBodyBytes = max(r.MaxInflightBodyBytes, r.MaxBodyBytes+1)
	return r
}

// Handler serves the API. Create it with New.
type Handler struct {
	backend  Backend
	opts     Options
	logger   *slog.Logger
	metrics  *Metrics
	router   *httprouter.Router
	started  time.Time
	pools    pools
	refusals throttle // logging of 429 and 503 replies
	denials  throttle // logging of 401 and 403 replies
	auth     authorizer
	inflight chan struct{} // a slot per publish request inside Backend.Publish
	budget   bodyBudget    // bytes of the body buffers of requests in flight
	decoders decoders      // pooled decoders of the content codings
	cors     *cors         // nil: no CORS headers
}

// New returns the HTTP handler of the API over b.
func New(b Backend, opts *Options) *Handler {
	o := opts.withDefaults()
	h := &Handler{
		backend:  b,
		opts:     o,
		logger:   o.Logger,
		metrics:  o.Metrics,
		started:  time.Now(),
		auth:     newAuthorizer(o.Tokens),
		inflight: make(chan struct{}, o.MaxInflightPublish),
		budget:   bodyBudget{limit: o.MaxInflightBodyBytes},
		cors:     newCORS(o.CORSOrigins),
	}

	r := httprouter.New()
	r.RedirectFixedPath = false
	r.RedirectTrailingSlash = false
	r.HandleMethodNotAllowed = true
	r.NotFound = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h.fail(w, req, event.Errorf(event.NotFound, "no such route"))
	})
	r.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h.fail(w, req, event.Errorf(event.MethodNotAllowed, "method not allowed"))
	})
	r.PanicHandler = func(w http.ResponseWriter, req *http.Request, v any) {
		h.fail(w, req, fmt.Errorf("panic in handler: %v", v))
	}
	r.POST("/publish", h.publish) // checks its token itself, to count refusals in its metrics
	r.GET("/events", h.guard(scopeRead, h.events))
	r.GET("/stats", h.guard(scopeRead, h.stats))
	r.GET("/healthz", h.healthz)
	r.HEAD("/healthz", h.healthz)
	r.GET("/readyz", h.readyz)
	r.HEAD("/readyz", h.readyz)
	metrics := h.metrics.handler()
	if !o.MetricsOpen {
		metrics = h.guardHandler(scopeRead, metrics)
	}
	r.Handler(http.MethodGet, "/metrics", metrics)
	h.router = r
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cors != nil && h.cors.handle(w, r) {
		return
	}
	h.router.ServeHTTP(w, r)
}

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	if err := h.backend.Ready(r.Context()); err != nil {
		// The reason as clients may see it (event.PublicMessage: no server
		// paths); the whole error is logged, at most once a second.
		if ok, skipped := h.refusals.allow(time.Now()); ok {
			h.logger.Warn("not ready", "err", err, "refusals_not_logged", skipped)
		}
		writeError(w, http.StatusServiceUnavailable, "not ready: "+event.PublicMessage(err), nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
