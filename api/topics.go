package api

import (
	"encoding/base64"
	"net/http"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// topicsReply is the body of GET /topics.
type topicsReply struct {
	Topics     []topicItem `json:"topics"`
	NextCursor *string     `json:"next_cursor"`
}

type topicItem struct {
	Topic string `json:"topic"`
	Count uint64 `json:"count"`
}

// topics serves GET /topics?cursor=&limit=: the topics in byte order with
// their lifetime counts of unique events, a page at a time (the cursor is
// opaque: the last topic of the previous page).
func (h *Handler) topics(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	qs, err := query(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := parseLimit(qs.Get("limit"), event.DefaultListLimit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	after := ""
	if c := qs.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(b) == 0 || len(b) > event.MaxFieldBytes {
			h.fail(w, r, event.ErrBadCursor)
			return
		}
		after = string(b)
	}
	page, more, err := h.backend.Topics(r.Context(), after, limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply := topicsReply{Topics: make([]topicItem, len(page))}
	for i, t := range page {
		reply.Topics[i] = topicItem{Topic: t.Topic, Count: t.Count}
	}
	if more && len(page) > 0 {
		next := base64.RawURLEncoding.EncodeToString([]byte(page[len(page)-1].Topic))
		reply.NextCursor = &next
	}
	writeJSON(w, http.StatusOK, reply)
}
