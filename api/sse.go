package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// streamFeed serves the feed as Server-Sent Events: one message per event
// (id: its seq, event: event, data: its JSON), from q.After on, then the
// events as they are applied, with a comment as heartbeat when there is
// nothing to send for Heartbeat. Every write must be taken within
// StreamWriteTimeout, else the stream is cut: a slow reader holds at most
// one chunk of events in memory, never a growing backlog. The stream ends
// when the client goes away or the server shuts down (CloseStreams).
func (h *Handler) streamFeed(w http.ResponseWriter, r *http.Request, q event.FeedQuery) {
	ctx, cancel := h.streamCtx(r)
	defer cancel()
	// Check the index before the reply starts, so that an unavailable one
	// is a proper error reply.
	if _, err := h.backend.Changed(ctx); err != nil {
		h.fail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no") // proxies: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	s := &sseStream{h: h, w: w, rc: rc, q: q}
	bufp := chunkPool.Get().(*[]byte)
	defer func() {
		if cap(s.buf) <= maxPooledChunk {
			*bufp = s.buf[:0]
			chunkPool.Put(bufp)
		}
	}()
	s.buf = append((*bufp)[:0], "retry: 2000\n\n"...)
	if !s.write() {
		return
	}
	heartbeat := time.NewTimer(h.opts.Heartbeat)
	defer heartbeat.Stop()
	for ctx.Err() == nil {
		changed, err := h.backend.Changed(ctx)
		if err != nil {
			return
		}
		n, err := s.readChunk(ctx)
		if err != nil || n > 0 && !s.write() {
			return
		}
		if n > 0 {
			continue
		}
		if !s.idle(ctx, changed, heartbeat) {
			return
		}
	}
}

// sseStream is the state of one event stream.
type sseStream struct {
	h   *Handler
	w   http.ResponseWriter
	rc  *http.ResponseController
	q   event.FeedQuery
	buf []byte
}

// readChunk encodes the next events (at most chunkEvents, about chunkBytes)
// into buf and returns how many.
func (s *sseStream) readChunk(ctx context.Context) (int, error) {
	n := 0
	q := s.q
	q.Limit = chunkEvents
	last, err := s.h.backend.Feed(ctx, q, func(e *event.Stored) bool {
		if n > 0 && len(s.buf) >= chunkBytes {
			return false
		}
		s.buf = append(s.buf, "id: "...)
		s.buf = strconv.AppendUint(s.buf, e.Seq, 10)
		s.buf = append(s.buf, "\nevent: event\ndata: "...)
		s.buf = appendEventJSON(s.buf, e)
		s.buf = append(s.buf, "\n\n"...)
		n++
		return true
	})
	if err != nil {
		return 0, err
	}
	s.q.After = last
	return n, nil
}

// write sends buf within the write timeout and flushes it; false when the
// client is gone or too slow.
func (s *sseStream) write() bool {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.h.opts.StreamWriteTimeout))
	_, err := s.w.Write(s.buf)
	s.buf = s.buf[:0]
	return err == nil && s.rc.Flush() == nil
}

// idle waits for the next commit, sending a heartbeat comment each time
// the timer fires; false when the stream must end.
func (s *sseStream) idle(ctx context.Context, changed <-chan struct{}, heartbeat *time.Timer) bool {
	for {
		select {
		case <-changed:
			return true
		case <-ctx.Done():
			return false
		case <-heartbeat.C:
			heartbeat.Reset(s.h.opts.Heartbeat)
			s.buf = append(s.buf, ": ping\n\n"...)
			if !s.write() {
				return false
			}
		}
	}
}
