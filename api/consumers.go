package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// cursorReply is the body of the /consumers/{name} routes.
type cursorReply struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Acked   uint64 `json:"acked"`
	Pending uint64 `json:"pending"`
}

func replyCursor(w http.ResponseWriter, status int, c event.Cursor) {
	writeJSON(w, status, cursorReply{Name: c.Name, Topic: c.Topic, Acked: c.Acked, Pending: c.Pending})
}

// maxCursorBody bounds the small JSON bodies of PUT and ack.
const maxCursorBody = 4 << 10

// readSmallJSON decodes an optional small JSON object body into v; an empty
// body leaves v as it is.
func readSmallJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxCursorBody+1))
	if err != nil {
		return badRequest("read body: " + err.Error())
	}
	if len(b) > maxCursorBody {
		return event.Errorf(event.TooLarge, "body is larger than %d bytes", maxCursorBody)
	}
	if len(trimSpace(b)) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest("body must be a JSON object: " + err.Error())
	}
	return nil
}

// putConsumer serves PUT /consumers/{name} with an optional body
// {"topic": T}: 201 when it creates the cursor, 200 when it exists.
func (h *Handler) putConsumer(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	var body struct {
		Topic string `json:"topic"`
	}
	if err := readSmallJSON(r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if len(body.Topic) > event.MaxFieldBytes {
		h.fail(w, r, badRequest("topic must be at most "+strconv.Itoa(event.MaxFieldBytes)+" bytes"))
		return
	}
	c, created, err := h.backend.PutCursor(r.Context(), ps.ByName("name"), body.Topic)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	replyCursor(w, status, c)
}

// getConsumer serves GET /consumers/{name}.
func (h *Handler) getConsumer(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c, err := h.backend.GetCursor(r.Context(), ps.ByName("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	replyCursor(w, http.StatusOK, c)
}

// deleteConsumer serves DELETE /consumers/{name}.
func (h *Handler) deleteConsumer(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	if err := h.backend.DeleteCursor(r.Context(), name); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "deleted": true})
}

// ackConsumer serves POST /consumers/{name}/ack {"seq": S}: acked becomes
// max(acked, S), durably before the reply.
func (h *Handler) ackConsumer(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	var body struct {
		Seq *uint64 `json:"seq"`
	}
	if err := readSmallJSON(r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if body.Seq == nil {
		h.fail(w, r, badRequest(`body must be {"seq": S}`))
		return
	}
	c, err := h.backend.AckCursor(r.Context(), ps.ByName("name"), *body.Seq)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	replyCursor(w, http.StatusOK, c)
}

// consumerNext serves GET /consumers/{name}/next?limit=&wait=: the feed
// page after the cursor's acked seq, of its topic. It does not move the
// cursor: acknowledging is a separate, explicit step.
func (h *Handler) consumerNext(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	qs, err := query(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p := feedParams{q: event.FeedQuery{Limit: event.DefaultListLimit}}
	if p.q.Limit, err = parseLimit(qs.Get("limit"), p.q.Limit); err != nil {
		h.fail(w, r, err)
		return
	}
	if p.wait, err = parseWait(qs.Get("wait")); err != nil {
		h.fail(w, r, err)
		return
	}
	c, err := h.backend.GetCursor(r.Context(), ps.ByName("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p.q.Topic, p.q.After = c.Topic, c.Acked
	h.feedPage(w, r, p)
}
