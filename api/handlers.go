package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// publish serves POST /publish: read and validate the whole body first, then
// hand the batch to the backend, which returns once it is durable.
func (h *Handler) publish(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	start := time.Now()
	if err := h.auth.check(r, scopePublish); err != nil {
		// Refused before a byte of the body is read.
		w.Header().Set("Connection", "close")
		h.fail(w, r, err)
		h.metrics.observePublish(StatusOf(err), 0, time.Since(start))
		return
	}
	b := h.pools.get()
	defer h.putBatch(b)

	status, n := h.doPublish(w, r, b)
	h.metrics.observePublish(status, n, time.Since(start))
}

func (h *Handler) doPublish(w http.ResponseWriter, r *http.Request, b *batch) (status, events int) {
	fail := func(err error) (int, int) {
		h.fail(w, r, err)
		return StatusOf(err), 0
	}
	q, err := parsePublishQuery(r)
	if err != nil {
		return fail(err)
	}
	b.q = q
	format, err := formatOf(r.Header.Get("Content-Type"))
	if err != nil {
		return fail(err)
	}
	if err := h.readBody(w, r, b); err != nil {
		return fail(err)
	}
	if err := h.decode(b, format); err != nil {
		return fail(err)
	}
	release, err := h.acquire(r.Context())
	if err != nil {
		return fail(err)
	}
	first, last, err := h.backend.Publish(r.Context(), b.events)
	release()
	if err != nil {
		return fail(err)
	}
	n := len(b.events)
	out := append(b.reply[:0], `{"enqueued":`...)
	out = strconv.AppendInt(out, int64(n), 10)
	out = appendUintField(out, "first_offset", first)
	out = appendUintField(out, "last_offset", last)
	if b.q.skipInvalid {
		out = appendRejected(out, b)
	}
	status = http.StatusOK
	if b.q.waitApplied && n > 0 {
		if out, err = h.appendVerdicts(r, out, first, last, b.events); err != nil {
			status = http.StatusAccepted // durable, verdict unknown
			out = append(out, `,"applied":false`...)
		}
	}
	out = append(out, "}\n"...)
	b.reply = out
	writeBody(w, status, out)
	return status, n
}

// appendRejected appends the rejected events of invalid=skip: the count and
// the problems (at most maxDetails of them, like the details of a 422).
func appendRejected(out []byte, b *batch) []byte {
	out = append(out, `,"rejected_events":`...)
	out = strconv.AppendInt(out, int64(b.rejected), 10)
	out = append(out, `,"rejected":`...)
	details := b.details
	if details == nil {
		details = []event.Problem{}
	}
	list, err := json.Marshal(details)
	if err != nil { // a []Problem always encodes
		list = []byte("[]")
	}
	return append(out, list...)
}

// appendVerdicts waits (up to ApplyWait) until the batch is applied and
// appends its verdicts in request order: "results": [{"offset", "status":
// "new" or "duplicate", "seq"}]. It fails when the wait ran out.
func (h *Handler) appendVerdicts(r *http.Request, out []byte, first, last uint64, events []event.Event) ([]byte, error) {
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.ApplyWait)
	defer cancel()
	if err := h.backend.WaitApplied(ctx, last); err != nil {
		return out, err
	}
	verdicts, err := h.backend.Verdicts(r.Context(), first, last, events)
	if err != nil {
		h.logger.Error("publish: verdicts", "first_offset", first, "last_offset", last, "err", err)
		return out, err
	}
	out = append(out, `,"results":[`...)
	for i, v := range verdicts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"offset":`...)
		out = strconv.AppendUint(out, v.Offset, 10)
		switch {
		case v.Duplicate:
			out = append(out, `,"status":"duplicate"`...)
		case v.Seq == 0:
			out = append(out, `,"status":"malformed"`...)
		default:
			out = append(out, `,"status":"new"`...)
		}
		out = appendUintField(out, "seq", v.Seq)
		out = append(out, '}')
	}
	return append(out, ']'), nil
}

// errBusy is the refusal of a publish request that found no free slot.
var errBusy = fmt.Errorf("too many publish requests in flight: %w", event.ErrOverloaded)

// acquire takes a slot on the write path, waiting up to InflightWait for one;
// release gives it back.
func (h *Handler) acquire(ctx context.Context) (release func(), err error) {
	select {
	case h.inflight <- struct{}{}:
		h.metrics.inflight.Inc()
		return h.release, nil
	default:
	}
	if h.opts.InflightWait < 0 {
		return nil, errBusy
	}
	t := time.NewTimer(h.opts.InflightWait)
	defer t.Stop()
	select {
	case h.inflight <- struct{}{}:
		h.metrics.inflight.Inc()
		return h.release, nil
	case <-t.C:
		return nil, errBusy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (h *Handler) release() {
	h.metrics.inflight.Dec()
	<-h.inflight
}

// events serves GET /events?topic=&limit=&cursor=: a page of unique events
// in (timestamp, offset) order, streamed (see page).
func (h *Handler) events(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	qs, err := query(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	q := event.ListQuery{Topic: qs.Get("topic"), Cursor: qs.Get("cursor")}
	if q.Limit, err = parseLimit(qs.Get("limit"), event.DefaultListLimit); err != nil {
		h.fail(w, r, err)
		return
	}
	if len(q.Topic) > event.MaxFieldBytes {
		h.fail(w, r, badRequest("topic must be at most "+strconv.Itoa(event.MaxFieldBytes)+" bytes"))
		return
	}
	if len(q.Cursor) > event.MaxCursorBytes {
		h.fail(w, r, badRequest("bad cursor"))
		return
	}
	limit := q.Limit
	pg := newPage(w, h.opts.MaxPageBytes, `{"events":[`)
	defer pg.release()
	next := ""
	if !h.readPage(r, pg, limit, func(n int, take func(*event.Stored) bool) (bool, error) {
		cq := q
		cq.Limit = n
		var err error
		if next, err = h.backend.List(r.Context(), cq, take); err != nil {
			return false, err
		}
		q.Cursor = next
		return next != "", nil
	}) {
		return
	}
	end := append(pg.buf[:0:0], `],"next_cursor":`...)
	if next == "" {
		end = append(end, "null"...)
	} else {
		end = appendJSONString(end, next)
	}
	pg.finish(append(end, "}\n"...))
}

// StatsReply is the body of GET /stats (clients of the API, such as the load
// generator and the tests, decode it with this type).
type StatsReply struct {
	Received         uint64            `json:"received"`
	UniqueProcessed  uint64            `json:"unique_processed"`
	DuplicateDropped uint64            `json:"duplicate_dropped"`
	Expired          uint64            `json:"expired"`
	Stored           uint64            `json:"stored"`
	FirstSeq         uint64            `json:"first_seq"`
	LastSeq          uint64            `json:"last_seq"`
	TopicCount       uint64            `json:"topic_count"`
	Topics           []string          `json:"topics"`
	TopicCounts      map[string]uint64 `json:"topic_counts"`
	TopicsTruncated  bool              `json:"topics_truncated,omitempty"`
	UptimeSeconds    int64             `json:"uptime_seconds"`
	WAL              WALStats          `json:"wal"`
	Dedup            DedupStats        `json:"dedup"`
}

// stats serves GET /stats: the counters, and the first MaxStatsTopics topics
// with their counts (all of them page by page at GET /topics). Its cost
// does not grow with the number of topics past that bound.
func (h *Handler) stats(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	st, err := h.backend.Stats(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	topics, more, err := h.backend.Topics(r.Context(), "", h.opts.MaxStatsTopics)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply := StatsReply{
		Received:         st.Received,
		UniqueProcessed:  st.Unique,
		DuplicateDropped: st.Duplicates,
		Expired:          st.Expired,
		Stored:           st.Stored,
		FirstSeq:         st.FirstSeq,
		LastSeq:          st.LastSeq,
		TopicCount:       st.TopicCount,
		Topics:           make([]string, len(topics)),
		TopicCounts:      make(map[string]uint64, len(topics)),
		TopicsTruncated:  more,
		UptimeSeconds:    int64(time.Since(h.started).Seconds()),
		WAL:              st.WAL,
		Dedup:            st.Dedup,
	}
	for i, t := range topics {
		reply.Topics[i] = t.Topic
		reply.TopicCounts[t.Topic] = t.Count
	}
	writeJSON(w, http.StatusOK, reply)
}
