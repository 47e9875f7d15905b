package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/julienschmidt/httprouter"
)

// Admin is the administrative half of the storage. It is optional: a
// Backend that implements it too gets the admin routes, GET and PUT
// /topics/{topic}/retention and GET /admin/backup; without it they are 404.
type Admin interface {
	// TopicRetention returns the retention of topic: its override and the
	// bounds in force.
	TopicRetention(ctx context.Context, topic string) (event.TopicRetention, error)
	// SetTopicRetention replaces the override of topic (one without a field
	// set removes it), durably, and returns the topic's retention.
	SetTopicRetention(ctx context.Context, topic string, o event.RetentionOverride) (event.TopicRetention, error)
	// Backup writes a consistent snapshot of the index to w while the
	// service goes on. begin is called before the first byte with what the
	// snapshot holds; an error before begin was called wrote nothing.
	Backup(ctx context.Context, w io.Writer, begin func(BackupInfo)) error
}

// BackupInfo describes a snapshot that Admin.Backup is about to write.
type BackupInfo struct {
	Checkpoint uint64 // every log record up to it is applied in the snapshot, none after it
	LastSeq    uint64 // the last seq given in the snapshot
	Format     uint64 // the index format
	Length     int64  // bytes of the stream
}

// retentionTopic returns the topic of a /topics/{topic}/retention path.
func retentionTopic(ps httprouter.Params) (string, error) {
	rest := ps.ByName("rest") // "/{topic}/retention"
	topic, ok := strings.CutSuffix(strings.TrimPrefix(rest, "/"), "/retention")
	if !ok || topic == "" {
		return "", event.Errorf(event.NotFound, "no such route")
	}
	if len(topic) > event.MaxFieldBytes {
		return "", badRequest("topic must be at most " + strconv.Itoa(event.MaxFieldBytes) + " bytes")
	}
	return topic, nil
}

// retentionReply is the body of the /topics/{topic}/retention routes; a
// null bound is none (in effective) or the default (in override).
type retentionReply struct {
	Topic     string        `json:"topic"`
	Override  retentionJSON `json:"override"`
	Effective retentionJSON `json:"effective"`
}

// retentionJSON is a retention as JSON: the body of PUT, and each half of
// the reply.
type retentionJSON struct {
	Age    *string `json:"age"`
	Events *uint64 `json:"events"`
}

func replyRetention(w http.ResponseWriter, tr event.TopicRetention) {
	reply := retentionReply{Topic: tr.Topic}
	if o := tr.Override; o.Age != nil {
		s := o.Age.String()
		reply.Override.Age = &s
	}
	reply.Override.Events = tr.Override.Events
	if tr.Effective.Age > 0 {
		s := tr.Effective.Age.String()
		reply.Effective.Age = &s
	}
	if tr.Effective.Events > 0 {
		n := tr.Effective.Events
		reply.Effective.Events = &n
	}
	writeJSON(w, http.StatusOK, reply)
}

// getRetention serves GET /topics/{topic}/retention.
func (h *Handler) getRetention(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	topic, err := retentionTopic(ps)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	tr, err := h.admin.TopicRetention(r.Context(), topic)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	replyRetention(w, tr)
}

// putRetention serves PUT /topics/{topic}/retention with a body {"age":
// "720h", "events": N}: a field left out (or null) follows the default, a
// zero is no bound for this topic, and {} removes the override.
func (h *Handler) putRetention(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	topic, err := retentionTopic(ps)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body retentionJSON
	if err := readStrictJSON(r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	o := event.RetentionOverride{Events: body.Events}
	if body.Age != nil {
		age, err := time.ParseDuration(*body.Age)
		if err != nil || age < 0 {
			h.fail(w, r, badRequest(`age must be a duration such as "720h" (0 for no bound)`))
			return
		}
		o.Age = &age
	}
	tr, err := h.admin.SetTopicRetention(r.Context(), topic, o)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	replyRetention(w, tr)
}

// readStrictJSON is readSmallJSON refusing unknown fields.
func readStrictJSON(r *http.Request, v any) error {
	var raw json.RawMessage
	if err := readSmallJSON(r, &raw); err != nil || raw == nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("body: " + err.Error())
	}
	return nil
}

// backupStallTimeout cuts a backup whose reader takes no write within it.
const backupStallTimeout = time.Minute

// backup serves GET /admin/backup: a consistent snapshot of the index,
// streamed while publishing and applying go on. The headers name what it
// holds; the stream carries its own CRC (see docs/operations.md). The
// server's write timeout does not bound it: each write gets
// backupStallTimeout.
func (h *Handler) backup(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	started := false
	dw := &deadlineWriter{w: w, rc: http.NewResponseController(w)}
	err := h.admin.Backup(r.Context(), dw, func(info BackupInfo) {
		hd := w.Header()
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Content-Length", strconv.FormatInt(info.Length, 10))
		hd.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="aggregator-index-%d.backup"`, info.Checkpoint))
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Aggregator-Checkpoint", strconv.FormatUint(info.Checkpoint, 10))
		hd.Set("X-Aggregator-Last-Seq", strconv.FormatUint(info.LastSeq, 10))
		hd.Set("X-Aggregator-Index-Format", strconv.FormatUint(info.Format, 10))
		dw.extend()
		w.WriteHeader(http.StatusOK)
		started = true
	})
	if err == nil {
		return
	}
	if !started {
		h.fail(w, r, err)
		return
	}
	// The reply is cut short of its Content-Length: the client sees it
	// (and the stream's CRC would fail).
	h.logger.Warn("backup cut off", "remote", r.RemoteAddr, "err", err)
}

// deadlineWriter moves the connection's write deadline before writes, at
// most once a second.
type deadlineWriter struct {
	w    io.Writer
	rc   *http.ResponseController
	next time.Time
}

func (d *deadlineWriter) extend() {
	now := time.Now()
	// ErrNotSupported (a writer without deadlines) leaves the server's.
	_ = d.rc.SetWriteDeadline(now.Add(backupStallTimeout))
	d.next = now.Add(time.Second)
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if time.Now().After(d.next) {
		d.extend()
	}
	return d.w.Write(p)
}
