package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aggregator-dev/aggregator/event"
)

// emptyPayload is the payload of an event published without one.
var emptyPayload = json.RawMessage("{}")

// batch is the reusable state of one publish request: the body, the decoded
// events (whose Payload slices point into body or compacted), the problems.
type batch struct {
	body      []byte
	compacted bytes.Buffer
	events    []event.Event
	details   []event.Problem
	problems  int
	reply     []byte
	lastTopic string
	lastSrc   string
}

// Pooled batches above these sizes are dropped instead of kept.
const (
	poolMaxBody   = 1 << 20
	poolMaxEvents = 4096
)

type pools struct{ batches sync.Pool }

func (p *pools) get() *batch {
	if b, ok := p.batches.Get().(*batch); ok {
		return b
	}
	return &batch{}
}

func (p *pools) put(b *batch) {
	if cap(b.body) > poolMaxBody || b.compacted.Cap() > poolMaxBody || cap(b.events) > poolMaxEvents {
		return
	}
	clear(b.events)
	b.events = b.events[:0]
	b.details = b.details[:0]
	b.problems = 0
	b.body = b.body[:0]
	b.compacted.Reset()
	b.lastTopic, b.lastSrc = "", ""
	p.batches.Put(b)
}

// readBody reads the request body into b.body, enforcing the size limit.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, b *batch) error {
	limit := h.opts.MaxBodyBytes
	tooLarge := func() error {
		// The rest of the body is not read: close the connection after
		// the reply rather than drain it.
		w.Header().Set("Connection", "close")
		return event.Errorf(event.TooLarge, "body is larger than %d bytes", limit)
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	want := 512
	if r.ContentLength >= 0 {
		want = int(r.ContentLength) + 1 // one more byte, to see EOF without growing
	}
	buf := slices.Grow(b.body[:0], want)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(len(buf), int(limit)+1-len(buf)))
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			b.body = buf[:0]
			return tooLarge()
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.body = buf[:0]
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// The server's read timeout cut a slow sender: 408, which
				// clients retry, and the connection closes.
				w.Header().Set("Connection", "close")
				return event.Errorf(event.Timeout, "body not received in time")
			}
			return badRequest("read body: " + err.Error())
		}
	}
	b.body = buf
	return nil
}

// isNDJSON reports whether the content type announces one event per line.
func isNDJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	return strings.EqualFold(mt, "application/x-ndjson") ||
		strings.EqualFold(mt, "application/ndjson") ||
		strings.EqualFold(mt, "application/jsonl") ||
		strings.EqualFold(mt, "application/x-jsonlines")
}

// decode parses and validates b.body into b.events. On any invalid event it
// returns an event.InvalidEvents error with the problems and b.events must
// be ignored.
func (h *Handler) decode(b *batch, ndjson bool) error {
	body := b.body
	if len(trimSpace(body)) == 0 {
		return badRequest("empty body")
	}
	if !utf8.Valid(body) {
		return badRequest("body is not valid UTF-8")
	}
	var err error
	if ndjson {
		err = h.decodeLines(b, body)
	} else {
		err = h.decodeJSON(b, trimSpace(body))
	}
	if err != nil {
		return err
	}
	if b.problems > 0 {
		return &event.Error{
			Kind:     event.InvalidEvents,
			Message:  invalidMessage(b.problems, len(b.details)),
			Problems: b.details,
		}
	}
	return nil
}

func invalidMessage(problems, listed int) string {
	msg := "invalid events: " + strconv.Itoa(problems) + " problem"
	if problems != 1 {
		msg += "s"
	}
	if listed < problems {
		msg += " (first " + strconv.Itoa(listed) + " listed)"
	}
	return msg
}

// syntaxError describes why body is not valid JSON.
func syntaxError(body []byte) string {
	var v struct{}
	err := json.Unmarshal(body, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed JSON at offset %d: %v", se.Offset, se)
	}
	return "malformed JSON"
}

func (h *Handler) tooMany() error {
	return event.Errorf(event.TooLarge, "more than %d events in one request", h.opts.MaxBatchEvents)
}

func (h *Handler) decodeJSON(b *batch, body []byte) error {
	if !json.Valid(body) {
		return badRequest(syntaxError(body))
	}
	switch body[0] {
	case '{':
		h.decodeEvent(b, 0, body)
		return nil
	case '[':
		it := newArrayIter(body)
		n := 0
		for elem, ok := it.next(); ok; elem, ok = it.next() {
			if n == h.opts.MaxBatchEvents {
				return h.tooMany()
			}
			h.decodeElement(b, n, elem)
			n++
		}
		if n == 0 {
			return event.Errorf(event.InvalidEvents, "empty batch: no events")
		}
		return nil
	default:
		return event.Errorf(event.InvalidEvents, "body must be a JSON object or an array of objects")
	}
}

func (h *Handler) decodeLines(b *batch, body []byte) error {
	n := 0
	for lineNo := 1; len(body) > 0; lineNo++ {
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		line = trimSpace(line)
		if len(line) == 0 {
			continue
		}
		if n == h.opts.MaxBatchEvents {
			return h.tooMany()
		}
		if !json.Valid(line) {
			return badRequest("line " + strconv.Itoa(lineNo) + ": " + syntaxError(line))
		}
		h.decodeElement(b, n, line)
		n++
	}
	return nil
}

// decodeElement decodes one element of a batch, which must be an object.
func (h *Handler) decodeElement(b *batch, idx int, elem []byte) {
	if elem[0] != '{' {
		b.problem(idx, "", "event must be a JSON object")
		return
	}
	h.decodeEvent(b, idx, elem)
}

func (b *batch) problem(idx int, field, msg string) {
	b.problems++
	if len(b.details) < maxDetails {
		b.details = append(b.details, event.Problem{Index: idx, Field: field, Message: msg})
	}
}

// decodeEvent decodes and validates the valid JSON object obj and appends the
// event to b.events, or records its problems.
func (h *Handler) decodeEvent(b *batch, idx int, obj []byte) {
	var topic, id, ts, src, payload []byte
	it := newObjectIter(obj)
	for key, val, ok := it.next(); ok; key, val, ok = it.next() {
		k := key[1 : len(key)-1]
		if bytes.IndexByte(k, '\\') >= 0 {
			var s string
			if json.Unmarshal(key, &s) != nil {
				continue
			}
			k = []byte(s)
		}
		// Later members win, as in encoding/json; keys match exactly.
		switch string(k) {
		case "topic":
			topic = val
		case "event_id":
			id = val
		case "timestamp":
			ts = val
		case "source":
			src = val
		case "payload":
			payload = val
		}
	}
	before := b.problems
	var e event.Event
	e.Topic = b.name(idx, "topic", topic, &b.lastTopic)
	e.EventID = b.name(idx, "event_id", id, nil)
	e.Timestamp = b.timestamp(idx, ts)
	e.Source = b.name(idx, "source", src, &b.lastSrc)
	e.Payload = h.payload(b, idx, payload)
	if b.problems == before {
		b.events = append(b.events, e)
	}
}

// str decodes the JSON string raw; ok is false (and a problem recorded) when
// raw is missing or not a string.
func (b *batch) str(idx int, field string, raw []byte, intern *string) (string, bool) {
	if raw == nil {
		b.problem(idx, field, "is required")
		return "", false
	}
	if raw[0] != '"' {
		b.problem(idx, field, "must be a string")
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		if intern != nil && *intern == string(inner) {
			return *intern, true
		}
		s := string(inner)
		if intern != nil {
			*intern = s
		}
		return s, true
	}
	// An escape is 2 to 6 bytes for 1 to 3 bytes of text (a surrogate pair
	// is 12 for 4): a string over this bound unescapes to over event.MaxFieldBytes.
	if len(inner) > 6*event.MaxFieldBytes {
		b.problem(idx, field, "must be at most "+strconv.Itoa(event.MaxFieldBytes)+" bytes")
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		b.problem(idx, field, "must be a string")
		return "", false
	}
	return s, true
}

// name decodes and checks topic, event_id or source.
func (b *batch) name(idx int, field string, raw []byte, intern *string) string {
	s, ok := b.str(idx, field, raw, intern)
	if !ok {
		return ""
	}
	switch {
	case len(s) > event.MaxFieldBytes:
		b.problem(idx, field, "must be at most "+strconv.Itoa(event.MaxFieldBytes)+" bytes")
	case strings.TrimSpace(s) == "":
		b.problem(idx, field, "must not be empty")
	case hasControl(s):
		b.problem(idx, field, "must not contain control characters (U+0000 to U+001F)")
	}
	return s
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 {
			return true
		}
	}
	return false
}

const badTimestamp = "must be an RFC 3339 time with a zone (Z or ±hh:mm), e.g. 2025-10-20T12:00:00Z"

func (b *batch) timestamp(idx int, raw []byte) time.Time {
	if raw != nil && raw[0] == '"' && len(raw) > 2+64 {
		b.problem(idx, "timestamp", badTimestamp)
		return time.Time{}
	}
	s, ok := b.str(idx, "timestamp", raw, nil)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		b.problem(idx, "timestamp", badTimestamp)
		return time.Time{}
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		b.problem(idx, "timestamp", "must be between years 0000 and 9999 in UTC")
		return time.Time{}
	}
	return t
}

// payload checks the payload object and returns it compact.
func (h *Handler) payload(b *batch, idx int, raw []byte) json.RawMessage {
	if raw == nil {
		return emptyPayload
	}
	if raw[0] != '{' {
		b.problem(idx, "payload", "must be a JSON object")
		return nil
	}
	if len(raw) > h.opts.MaxPayloadBytes {
		b.problem(idx, "payload", "must be at most "+strconv.Itoa(h.opts.MaxPayloadBytes)+" bytes")
		return nil
	}
	depth, spaced := shape(raw)
	if depth > h.opts.MaxPayloadDepth {
		b.problem(idx, "payload", "must be nested at most "+strconv.Itoa(h.opts.MaxPayloadDepth)+" levels deep")
		return nil
	}
	if !spaced {
		return raw
	}
	start := b.compacted.Len()
	if err := json.Compact(&b.compacted, raw); err != nil {
		b.problem(idx, "payload", "must be a JSON object")
		return nil
	}
	// When the buffer grows it moves to a new array, but the old one, which
	// earlier payloads point into, is never written again.
	out := b.compacted.Bytes()[start:]
	return out[:len(out):len(out)]
}
