package api

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/aggregator-dev/aggregator/event"
)

// Pages of /events and /feed are streamed: the handler reads the events
// from the backend in chunks (one read transaction each), encodes them into
// a buffer of at most about chunkBytes, and writes that out before reading
// the next chunk, so neither a page nor a slow reader holds more than a
// chunk in memory, and no read transaction waits on the network. A page
// ends at its limit of events or at the byte budget (MaxPageBytes, at least
// one event).
const (
	chunkEvents = 512      // events per backend call
	chunkBytes  = 64 << 10 // buffered JSON before it is written out
	// maxPooledChunk is the largest buffer kept for reuse: a chunk holds at
	// least one event, so it grows past chunkBytes with large payloads.
	maxPooledChunk = 4 << 20
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, 2*chunkBytes); return &b }}

// page is one streamed reply of events.
type page struct {
	w       http.ResponseWriter
	bufp    *[]byte
	buf     []byte
	budget  int  // JSON bytes of events the page may hold
	bytes   int  // JSON bytes of the events taken
	events  int  // events taken
	inChunk int  // events taken since the last flush
	full    bool // the budget refused an event: the page is complete
	started bool // the status and the start of the body are written
	failed  bool // a write failed: the client is gone
	prefix  string
}

func newPage(w http.ResponseWriter, budget int, prefix string) *page {
	bufp := chunkPool.Get().(*[]byte)
	return &page{w: w, bufp: bufp, buf: (*bufp)[:0], budget: budget, prefix: prefix}
}

// release returns the buffer to the pool.
func (p *page) release() {
	if cap(p.buf) <= maxPooledChunk {
		*p.bufp = p.buf[:0]
		chunkPool.Put(p.bufp)
	}
}

// take adds an event to the page unless the budget or the chunk is full (it
// returns false then, and the event is left to a later chunk or page).
func (p *page) take(e *event.Stored) bool {
	if p.inChunk > 0 && len(p.buf) >= chunkBytes {
		return false
	}
	start := len(p.buf)
	if p.events > 0 {
		p.buf = append(p.buf, ',')
	}
	p.buf = appendEventJSON(p.buf, e)
	n := len(p.buf) - start
	if p.events > 0 && p.bytes+n > p.budget {
		p.buf = p.buf[:start]
		p.full = true
		return false
	}
	p.bytes += n
	p.events++
	p.inChunk++
	return true
}

// flush writes out what is buffered, starting the reply first.
func (p *page) flush() {
	if !p.started {
		h := p.w.Header()
		h["Content-Type"] = jsonContentType
		p.w.WriteHeader(http.StatusOK)
		p.started = true
		p.buf = append([]byte(p.prefix), p.buf...)
	}
	if len(p.buf) > 0 && !p.failed {
		if _, err := p.w.Write(p.buf); err != nil {
			p.failed = true
		}
	}
	p.buf, p.inChunk = p.buf[:0], 0
}

// finish writes the rest of the reply: what is buffered, then end.
func (p *page) finish(end []byte) {
	p.buf = append(p.buf, end...)
	p.flush()
}

// abort ends a reply that already started after a read failed: the client
// must not take a cut page for a complete one.
func (h *Handler) abort(p *page, r *http.Request, err error) {
	if !p.started {
		h.fail(p.w, r, err)
		return
	}
	h.logger.Error("stream failed", "method", r.Method, "path", r.URL.Path, "err", err)
	panic(http.ErrAbortHandler)
}

// readPage fills p from the backend, chunk by chunk, up to limit events,
// and reports whether it could (else the reply is already sent or aborted).
// read hands at most n events to take, starting where its previous call
// ended, and reports whether events may follow what it handed over.
func (h *Handler) readPage(r *http.Request, p *page, limit int,
	read func(n int, take func(*event.Stored) bool) (more bool, err error)) bool {
	for {
		more, err := read(min(limit-p.events, chunkEvents), p.take)
		if err != nil {
			h.abort(p, r, err)
			return false
		}
		if p.full || p.events == limit || !more {
			return true
		}
		p.flush() // resets the chunk, so the next call takes at least one event
	}
}

// appendUintField appends ,"name":v.
func appendUintField(dst []byte, name string, v uint64) []byte {
	dst = append(dst, `,"`...)
	dst = append(dst, name...)
	dst = append(dst, `":`...)
	return strconv.AppendUint(dst, v, 10)
}
