package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// feedParams are the parameters of GET /feed (and of a named consumer's
// next page, which takes after and topic from the cursor).
type feedParams struct {
	q    event.FeedQuery
	wait time.Duration
	sse  bool
}

// parseFeed reads after, limit, topic and wait, and the SSE choice (Accept:
// text/event-stream, resuming after Last-Event-ID when it is sent).
func parseFeed(r *http.Request) (feedParams, error) {
	qs, err := query(r)
	if err != nil {
		return feedParams{}, err
	}
	p := feedParams{q: event.FeedQuery{Topic: qs.Get("topic"), Limit: event.DefaultListLimit}}
	if len(p.q.Topic) > event.MaxFieldBytes {
		return p, badRequest("topic must be at most " + strconv.Itoa(event.MaxFieldBytes) + " bytes")
	}
	if s := qs.Get("after"); s != "" {
		if p.q.After, err = strconv.ParseUint(s, 10, 64); err != nil {
			return p, badRequest("after must be a seq: an integer from 0")
		}
	}
	if p.q.Limit, err = parseLimit(qs.Get("limit"), p.q.Limit); err != nil {
		return p, err
	}
	if p.wait, err = parseWait(qs.Get("wait")); err != nil {
		return p, err
	}
	p.sse = acceptsEventStream(r.Header.Get("Accept"))
	if id := strings.TrimSpace(r.Header.Get("Last-Event-ID")); p.sse && id != "" {
		if p.q.After, err = strconv.ParseUint(id, 10, 64); err != nil {
			return p, badRequest("Last-Event-ID must be a seq")
		}
	}
	return p, nil
}

// parseLimit reads a page size from 1 to event.MaxListLimit ("": def).
func parseLimit(s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > event.MaxListLimit {
		return 0, badRequest("limit must be an integer from 1 to " + strconv.Itoa(event.MaxListLimit))
	}
	return n, nil
}

// parseWait reads a Go duration from 0 to MaxWait ("": 0).
func parseWait(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > MaxWait {
		return 0, badRequest("wait must be a duration from 0s to " + MaxWait.String() + ", e.g. 30s")
	}
	return d, nil
}

func acceptsEventStream(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		if strings.EqualFold(strings.TrimSpace(mt), "text/event-stream") {
			return true
		}
	}
	return false
}

// feed serves GET /feed?after=&limit=&topic=&wait=.
func (h *Handler) feed(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	p, err := parseFeed(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if p.sse {
		h.streamFeed(w, r, p.q)
		return
	}
	h.feedPage(w, r, p)
}

// streamCtx is the request's context, ended also by CloseStreams.
func (h *Handler) streamCtx(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	go func() {
		select {
		case <-h.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// feedPage answers one page of the feed, waiting up to p.wait for an event
// when there is none yet (long-poll, woken by the consumer's commits).
func (h *Handler) feedPage(w http.ResponseWriter, r *http.Request, p feedParams) {
	ctx, cancel := h.streamCtx(r)
	defer cancel()
	if p.wait > 0 {
		// The server's write timeout counts from the request; the wait
		// comes on top of it.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(p.wait + h.opts.StreamWriteTimeout))
	}
	pg := newPage(w, h.opts.MaxPageBytes, `{"events":[`)
	defer pg.release()
	deadline := time.Now().Add(p.wait)
	q := p.q
	for {
		// Taken before the read: if the read finds nothing, the first
		// commit after it closes the channel.
		changed, err := h.backend.Changed(ctx)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !h.readPage(r, pg, p.q.Limit, func(n int, take func(*event.Stored) bool) (bool, error) {
			return h.feedChunk(ctx, &q, n, take)
		}) {
			return
		}
		if pg.events > 0 || !waitChange(ctx, changed, deadline) {
			break
		}
	}
	pg.finish(append(appendUintField([]byte("]"), "next_after", q.After), "}\n"...))
}

// waitChange waits until changed is closed (true), or deadline passes or
// ctx ends (false).
func waitChange(ctx context.Context, changed <-chan struct{}, deadline time.Time) bool {
	d := time.Until(deadline)
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-changed:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// feedChunk reads up to n events after q.After into take and moves q.After
// to the last one taken; more is false when the feed ended before n.
func (h *Handler) feedChunk(ctx context.Context, q *event.FeedQuery, n int, take func(*event.Stored) bool) (more bool, err error) {
	taken, refused := 0, false
	cq := *q
	cq.Limit = n
	last, err := h.backend.Feed(ctx, cq, func(e *event.Stored) bool {
		if !take(e) {
			refused = true
			return false
		}
		taken++
		return true
	})
	if err != nil {
		return false, err
	}
	q.After = last
	return refused || taken == n, nil
}
