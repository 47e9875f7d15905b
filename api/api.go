// Package api is the HTTP interface of the aggregator: POST /publish, GET
// /events, GET /feed, GET /stats, the health probes and the Prometheus
// metrics; for a Backend that implements Admin, the admin routes (topic
// retention, GET /admin/backup; admin.go); and the OpenAPI document of them
// all (GET /openapi.json) and a dashboard (GET /ui), both embedded.
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
	"sync"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// Backend is the storage behind the API. Every method may return an error
// wrapping event.ErrUnavailable while the index is opening or closed.
type Backend interface {
	// Publish makes events durable and returns the log offsets of the first
	// and the last one. It returns only after they are durable, or with an
	// error and none of them acknowledged. The events (and their Payload
	// bytes) belong to the caller and are reused after Publish returns: a
	// Backend that keeps them must copy them.
	Publish(ctx context.Context, events []event.Event) (first, last uint64, err error)
	// WaitApplied returns nil once the log offset is applied to the index,
	// or ctx.Err() when ctx ends first.
	WaitApplied(ctx context.Context, offset uint64) error
	// Verdicts says what the index made of the applied records at offsets
	// first to last, which hold events.
	Verdicts(ctx context.Context, first, last uint64, events []event.Event) ([]event.Verdict, error)
	// List hands one page of unique events in time order to take (which
	// returns false to leave the rest to the next page; an event's Payload
	// is valid only during the call) and returns the next page's cursor ("":
	// no more). A bad cursor is an error wrapping event.ErrBadCursor.
	List(ctx context.Context, q event.ListQuery, take func(*event.Stored) bool) (next string, err error)
	// Feed hands the events after q.After, in seq order, to take, and
	// returns the seq of the last one taken (q.After when none was).
	Feed(ctx context.Context, q event.FeedQuery, take func(*event.Stored) bool) (last uint64, err error)
	// Changed returns a channel that is closed at the next commit to the
	// index (and when the index closes): a reader that found nothing new
	// waits on the channel it got before it read, then reads again.
	Changed(ctx context.Context) (<-chan struct{}, error)
	// Topics returns up to limit topics after the topic after, with their
	// counts, and whether more follow.
	Topics(ctx context.Context, after string, limit int) ([]event.TopicCount, bool, error)
	// PutCursor creates the named cursor on topic unless it exists (then
	// created is false); see dedup.Store.PutCursor.
	PutCursor(ctx context.Context, name, topic string) (c event.Cursor, created bool, err error)
	// GetCursor returns the named cursor; an unknown one is an error
	// wrapping event.ErrNotFound.
	GetCursor(ctx context.Context, name string) (event.Cursor, error)
	// AckCursor moves the named cursor to max(acked, seq), durably.
	AckCursor(ctx context.Context, name string, seq uint64) (event.Cursor, error)
	// DeleteCursor removes the named cursor.
	DeleteCursor(ctx context.Context, name string) error
	// Stats returns the lifetime counters.
	Stats(ctx context.Context) (Stats, error)
	// Ready returns nil when the service accepts writes and serves reads,
	// else the reason.
	Ready(ctx context.Context) error
}

// Stats are the counters of GET /stats. They are lifetime counters: they
// survive a restart. Reading them costs the same whatever the number of
// events or topics.
type Stats struct {
	Received   uint64 // events acknowledged by POST /publish
	Unique     uint64 // events the index kept
	Duplicates uint64 // events the index dropped as duplicates
	Expired    uint64 // unique events removed by retention
	Stored     uint64 // unique events still stored (= Unique - Expired)
	FirstSeq   uint64 // seq of the oldest stored event (LastSeq+1 when none)
	LastSeq    uint64 // seq of the last unique event
	TopicCount uint64 // topics with at least one unique event
	WAL        WALStats
	Dedup      DedupStats
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
	Forgotten       uint64  `json:"forgotten"` // keys the dedup window dropped (lifetime)
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
	// DefaultMaxPageBytes bounds the JSON of the events of one page of
	// /events or /feed (a page holds at least one event).
	DefaultMaxPageBytes = 4 << 20
	// DefaultApplyWait is how long POST /publish?wait=applied waits for the
	// consumer before it answers 202 without verdicts.
	DefaultApplyWait = 5 * time.Second
	// MaxWait bounds the wait parameter of /feed (long-poll).
	MaxWait = 60 * time.Second
	// DefaultHeartbeat is the interval of the comments that keep an idle
	// Server-Sent Events stream alive.
	DefaultHeartbeat = 15 * time.Second
	// DefaultStreamWriteTimeout cuts a reader of a stream or a long-poll that
	// does not take a write within it.
	DefaultStreamWriteTimeout = 10 * time.Second
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
	MaxPageBytes    int           // JSON bytes of the events of one page; default 4 MiB
	ApplyWait       time.Duration // wait of POST /publish?wait=applied; default 5s

	// Heartbeat is the interval of SSE keep-alive comments (default
	// DefaultHeartbeat); StreamWriteTimeout cuts a slow reader of a stream
	// or long-poll (default DefaultStreamWriteTimeout).
	Heartbeat          time.Duration
	StreamWriteTimeout time.Duration

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
	if r.MaxPageBytes <= 0 {
		r.MaxPageBytes = DefaultMaxPageBytes
	}
	if r.ApplyWait <= 0 {
		r.ApplyWait = DefaultApplyWait
	}
	if r.Heartbeat <= 0 {
		r.Heartbeat = DefaultHeartbeat
	}
	if r.StreamWriteTimeout <= 0 {
		r.StreamWriteTimeout = DefaultStreamWriteTimeout
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
	statics  statics       // GET /openapi.json and the dashboard
	admin    Admin         // nil: the backend has no admin half

	// closing is closed by CloseStreams: open streams and long-polls end.
	closing   chan struct{}
	closeOnce sync.Once
	budget    bodyBudget // bytes of the body buffers of requests in flight
	decoders  decoders   // pooled decoders of the content codings
	cors      *cors      // nil: no CORS headers
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
		closing:  make(chan struct{}),
		budget:   bodyBudget{limit: o.MaxInflightBodyBytes},
		cors:     newCORS(o.CORSOrigins),
	}
	h.statics = newStatics(h.auth.protected&scopeRead != 0)

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
	if a, ok := b.(Admin); ok {
		h.admin = a
	}
	for _, rt := range h.routes() {
		r.Handle(rt.method, rt.path, rt.handle)
	}
	h.router = r
	return h
}

// route is one route of the API: a method, a path in httprouter's syntax
// (":name" a parameter), and its handler with its token check.
type route struct {
	method string
	path   string
	handle httprouter.Handle
}

// routes is the one table of the API's routes: New registers exactly these,
// and TestOpenAPICoversEveryRoute checks each one against the OpenAPI
// document api/openapi.json (served at GET /openapi.json). A route added
// here needs its operation there, and a line in docs/api.md.
func (h *Handler) routes() []route {
	metrics := h.metrics.handler()
	if !h.opts.MetricsOpen {
		metrics = h.guardHandler(scopeRead, metrics)
	}
	rts := []route{
		{http.MethodPost, "/publish", h.publish}, // checks its token itself, to count refusals in its metrics
		{http.MethodGet, "/events", h.guard(scopeRead, h.events)},
		{http.MethodGet, "/feed", h.guard(scopeRead, h.feed)},
		{http.MethodGet, "/topics", h.guard(scopeRead, h.topics)},
		{http.MethodGet, "/stats", h.guard(scopeRead, h.stats)},
		{http.MethodPut, "/consumers/:name", h.guard(scopeRead, h.putConsumer)},
		{http.MethodGet, "/consumers/:name", h.guard(scopeRead, h.getConsumer)},
		{http.MethodDelete, "/consumers/:name", h.guard(scopeRead, h.deleteConsumer)},
		{http.MethodGet, "/consumers/:name/next", h.guard(scopeRead, h.consumerNext)},
		{http.MethodPost, "/consumers/:name/ack", h.guard(scopeRead, h.ackConsumer)},
		{http.MethodGet, "/healthz", h.healthz},
		{http.MethodHead, "/healthz", h.healthz},
		{http.MethodGet, "/readyz", h.readyz},
		{http.MethodHead, "/readyz", h.readyz},
		{http.MethodGet, "/metrics", func(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
			metrics.ServeHTTP(w, r)
		}},
		{http.MethodGet, "/openapi.json", h.openapi},
		{http.MethodGet, "/ui", h.dashboard},
		{http.MethodGet, "/ui/:file", h.dashboardFile},
	}
	if h.admin != nil {
		// The topic of /topics/{topic}/retention is everything between
		// /topics/ and /retention, so that a topic with a slash in it can
		// be sent as is or as %2F.
		rts = append(rts,
			route{http.MethodGet, "/topics/*rest", h.guard(scopeRead, h.getRetention)},
			route{http.MethodPut, "/topics/*rest", h.guard(scopeAdmin, h.putRetention)},
			route{http.MethodGet, "/admin/backup", h.guard(scopeAdmin, h.backup)},
		)
	}
	return rts
}

// CloseStreams ends the open Server-Sent Events streams and long-polls
// (their replies end cleanly), so that a graceful shutdown does not wait for
// them; register it with http.Server.RegisterOnShutdown. Later streams end
// at once.
func (h *Handler) CloseStreams() { h.closeOnce.Do(func() { close(h.closing) }) }

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
