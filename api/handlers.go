package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
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
	out = append(out, `,"first_offset":`...)
	out = strconv.AppendUint(out, first, 10)
	out = append(out, `,"last_offset":`...)
	out = strconv.AppendUint(out, last, 10)
	if b.q.skipInvalid {
		out = appendRejected(out, b)
	}
	out = append(out, "}\n"...)
	b.reply = out
	writeBody(w, http.StatusOK, out)
	return http.StatusOK, n
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

// eventsReply is the body of GET /events.
type eventsReply struct {
	Events     []event.Stored `json:"events"`
	NextCursor *string        `json:"next_cursor"`
}

// events serves GET /events?topic=&limit=&cursor=.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	qs, err := query(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	q := event.ListQuery{Topic: qs.Get("topic"), Cursor: qs.Get("cursor"), Limit: event.DefaultListLimit}
	if s := qs.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > event.MaxListLimit {
			h.fail(w, r, badRequest("limit must be an integer from 1 to "+strconv.Itoa(event.MaxListLimit)))
			return
		}
		q.Limit = n
	}
	if len(q.Topic) > event.MaxFieldBytes {
		h.fail(w, r, badRequest("topic must be at most "+strconv.Itoa(event.MaxFieldBytes)+" bytes"))
		return
	}
	if len(q.Cursor) > event.MaxCursorBytes {
		h.fail(w, r, badRequest("bad cursor"))
		return
	}
	page, err := h.backend.List(r.Context(), q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply := eventsReply{Events: page.Events}
	if reply.Events == nil {
		reply.Events = []event.Stored{}
	}
	for i := range reply.Events {
		if len(reply.Events[i].Payload) == 0 {
			reply.Events[i].Payload = emptyPayload
		}
	}
	if page.NextCursor != "" {
		reply.NextCursor = &page.NextCursor
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(reply); err != nil {
		h.fail(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, buf.Bytes())
}

// StatsReply is the body of GET /stats (clients of the API, such as the load
// generator and the tests, decode it with this type).
type StatsReply struct {
	Received         uint64            `json:"received"`
	UniqueProcessed  uint64            `json:"unique_processed"`
	DuplicateDropped uint64            `json:"duplicate_dropped"`
	Topics           []string          `json:"topics"`
	TopicCounts      map[string]uint64 `json:"topic_counts"`
	TopicsTruncated  bool              `json:"topics_truncated,omitempty"`
	UptimeSeconds    int64             `json:"uptime_seconds"`
	WAL              WALStats          `json:"wal"`
	Dedup            DedupStats        `json:"dedup"`
}

// stats serves GET /stats.
func (h *Handler) stats(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	st, err := h.backend.Stats(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	topics := make([]string, 0, len(st.TopicCounts))
	for t := range st.TopicCounts {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	reply := StatsReply{
		Received:         st.Received,
		UniqueProcessed:  st.Unique,
		DuplicateDropped: st.Duplicates,
		Topics:           topics,
		TopicCounts:      st.TopicCounts,
		UptimeSeconds:    int64(time.Since(h.started).Seconds()),
		WAL:              st.WAL,
		Dedup:            st.Dedup,
	}
	if len(topics) > h.opts.MaxStatsTopics {
		reply.Topics = topics[:h.opts.MaxStatsTopics]
		reply.TopicsTruncated = true
		reply.TopicCounts = make(map[string]uint64, len(reply.Topics))
		for _, t := range reply.Topics {
			reply.TopicCounts[t] = st.TopicCounts[t]
		}
	}
	if reply.TopicCounts == nil {
		reply.TopicCounts = map[string]uint64{}
	}
	writeJSON(w, http.StatusOK, reply)
}
