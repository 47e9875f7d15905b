package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
	rejected  int // events with a problem
	reply     []byte
	lastTopic string
	lastSrc   string

	q       publishQuery
	raw     rawBody // the body as sent, while it is read
	charged int64   // bytes of the body budget this batch holds

	// Scratch space of field mapping (mapping.go).
	members []member
	keys    [][]byte
	canon   bytes.Buffer
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
	if cap(b.body) > poolMaxBody || b.compacted.Cap() > poolMaxBody || cap(b.events) > poolMaxEvents ||
		b.canon.Cap() > poolMaxBody || cap(b.members) > poolMaxEvents {
		return
	}
	clear(b.events)
	b.events = b.events[:0]
	b.details = b.details[:0]
	b.problems, b.rejected = 0, 0
	b.body = b.body[:0]
	b.compacted.Reset()
	b.lastTopic, b.lastSrc = "", ""
	b.q = publishQuery{}
	clear(b.members)
	b.members = b.members[:0]
	clear(b.keys)
	b.keys = b.keys[:0]
	b.canon.Reset()
	p.batches.Put(b)
}

// putBatch gives b's share of the body budget back and b to the pool.
func (h *Handler) putBatch(b *batch) {
	h.giveBudget(b, b.charged)
	h.pools.put(b)
}

// decode parses and validates b.body into b.events. On any invalid event it
// returns an event.InvalidEvents error with the problems and b.events must
// be ignored; with invalid=skip only when no event is valid.
func (h *Handler) decode(b *batch, format bodyFormat) error {
	body := b.body
	if len(trimSpace(body)) == 0 {
		return badRequest("empty body")
	}
	if !utf8.Valid(body) {
		return badRequest("body is not valid UTF-8")
	}
	var err error
	switch t := trimSpace(body); {
	case format == formatNDJSON:
		err = h.decodeLines(b, body)
	case format == formatSniff && t[0] == '{':
		// NDJSON under another content type: the first line is a whole
		// value and more follows; a single object stays JSON.
		if validJSON(t) {
			err = h.decodeJSON(b, t, true)
		} else if looksNDJSON(t) {
			err = h.decodeLines(b, body)
		} else {
			err = badRequest(syntaxError(t))
		}
	default:
		err = h.decodeJSON(b, t, false)
	}
	if err != nil {
		return err
	}
	if b.problems > 0 && (!b.q.skipInvalid || len(b.events) == 0) {
		return &event.Error{
			Kind:     event.InvalidEvents,
			Message:  invalidMessage(b.problems, len(b.details)),
			Problems: b.details,
		}
	}
	return nil
}

// looksNDJSON reports whether the body's first line is a whole JSON value
// (so that the body is values one per line, not one value over many lines).
func looksNDJSON(body []byte) bool {
	i := bytes.IndexByte(body, '\n')
	return i > 0 && validJSON(trimSpace(body[:i]))
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

// decodeJSON decodes one object or an array of objects; valid says that
// validJSON(body) is known to hold.
func (h *Handler) decodeJSON(b *batch, body []byte, valid bool) error {
	if !valid && !validJSON(body) {
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

// decodeLines decodes one event per line. A line that is not JSON fails
// the request (400), or with invalid=skip is one more rejected event.
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
		switch {
		case validJSON(line):
			h.decodeElement(b, n, line)
		case b.q.skipInvalid:
			b.problem(n, "", "line "+strconv.Itoa(lineNo)+": "+syntaxError(line))
			b.rejected++
		default:
			return badRequest("line " + strconv.Itoa(lineNo) + ": " + syntaxError(line))
		}
		n++
	}
	return nil
}

// decodeElement decodes one element of a batch, which must be an object.
func (h *Handler) decodeElement(b *batch, idx int, elem []byte) {
	if elem[0] != '{' {
		b.problem(idx, "", "event must be a JSON object")
		b.rejected++
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

// fields are the raw values of an event object's members that mean
// something to the service: the fields, the timestamp aliases, and whether
// other members are there.
type fields struct {
	topic, id, ts, src, payload []byte
	atTimestamp, time, date     []byte // timestamp aliases
	others                      bool   // members of no other kind
	badKey                      bool   // a member name with a lone surrogate escape
}

// scanFields finds the members of the valid JSON object obj. Later members
// win, as in encoding/json; keys match exactly.
func scanFields(obj []byte) fields {
	var f fields
	it := newObjectIter(obj)
	for key, val, ok := it.next(); ok; key, val, ok = it.next() {
		k, good := memberName(key)
		if !good {
			f.badKey = true
			continue
		}
		switch string(k) {
		case "topic":
			f.topic = val
		case "event_id":
			f.id = val
		case "timestamp":
			f.ts = val
		case "source":
			f.src = val
		case "payload":
			f.payload = val
		case "@timestamp":
			f.atTimestamp = val
		case "time":
			f.time = val
		case "date":
			f.date = val
		default:
			f.others = true
		}
	}
	return f
}

// memberName returns the unescaped text of the quoted JSON string key;
// false when it holds a lone surrogate escape, which would unescape to
// U+FFFD like any other lone surrogate.
func memberName(key []byte) ([]byte, bool) {
	k := key[1 : len(key)-1]
	if bytes.IndexByte(k, '\\') < 0 {
		return k, true
	}
	if hasLoneSurrogate(k) {
		return nil, false
	}
	var s string
	if json.Unmarshal(key, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

// decodeEvent decodes and validates the valid JSON object obj, mapping the
// fields as the query asks (mapping.go), and appends the event to b.events,
// or records its problems.
func (h *Handler) decodeEvent(b *batch, idx int, obj []byte) {
	f := scanFields(obj)
	before := b.problems
	if f.badKey {
		b.problem(idx, "", "member names must not contain lone surrogate escapes (\\ud800 to \\udfff)")
	}
	var e event.Event
	e.Topic = b.nameOr(idx, "topic", f.topic, b.q.topic, &b.lastTopic)
	switch {
	case f.id == nil && b.q.contentID:
		e.EventID = b.contentID(obj, &f)
	default:
		e.EventID = b.name(idx, "event_id", f.id, nil)
	}
	var tsKey string
	e.Timestamp, tsKey = b.eventTime(idx, &f)
	e.Source = b.nameOr(idx, "source", f.src, b.q.source, &b.lastSrc)
	e.Payload = h.payload(b, idx, f.payload)
	if b.q.extraPayload && e.Payload != nil && (f.others || hasUnusedAlias(&f, tsKey)) {
		e.Payload = h.withExtras(b, idx, obj, e.Payload, tsKey)
	}
	if b.problems == before {
		b.events = append(b.events, e)
	} else {
		b.rejected++
	}
}

// nameOr is name, with def for a missing field when def is not "".
func (b *batch) nameOr(idx int, field string, raw []byte, def string, intern *string) string {
	if raw == nil && def != "" {
		return def
	}
	return b.name(idx, field, raw, intern)
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
	// encoding/json turns a lone surrogate into U+FFFD, so \ud800 and
	// \udc00 would be the same id: refuse them instead.
	if hasLoneSurrogate(inner) {
		b.problem(idx, field, "must not contain lone surrogate escapes (\\ud800 to \\udfff)")
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		b.problem(idx, field, "must be a string")
		return "", false
	}
	return s, true
}

// hasLoneSurrogate reports whether the inside of a valid JSON string has a
// \u escape of a UTF-16 surrogate that is not a high one followed by an
// escaped low one.
func hasLoneSurrogate(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		i++
		if s[i] != 'u' {
			continue
		}
		r := hex4(s[i+1 : i+5])
		i += 4
		switch {
		case r < 0xd800 || r > 0xdfff:
		case r >= 0xdc00:
			return true // a low surrogate first
		case i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u':
			if lo := hex4(s[i+3 : i+7]); lo < 0xdc00 || lo > 0xdfff {
				return true
			}
			i += 6
		default:
			return true
		}
	}
	return false
}

// hex4 decodes four hex digits (valid JSON guarantees them).
func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// name decodes and checks topic, event_id or source.
func (b *batch) name(idx int, field string, raw []byte, intern *string) string {
	s, ok := b.str(idx, field, raw, intern)
	if !ok {
		return ""
	}
	// The body is valid UTF-8 already: the other rules of nameProblem.
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

// timestamp parses the RFC 3339 string of field.
func (b *batch) timestamp(idx int, field string, raw []byte) time.Time {
	if raw != nil && raw[0] == '"' && len(raw) > 2+64 {
		b.problem(idx, field, badTimestamp)
		return time.Time{}
	}
	s, ok := b.str(idx, field, raw, nil)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		b.problem(idx, field, badTimestamp)
		return time.Time{}
	}
	return b.inRange(idx, field, t)
}

// inRange returns t in UTC, or records a problem when it is outside the
// years 0000 to 9999.
func (b *batch) inRange(idx int, field string, t time.Time) time.Time {
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		b.problem(idx, field, "must be between years 0000 and 9999 in UTC")
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
	return h.checkPayload(b, idx, raw)
}

// checkPayload checks the size and depth of the object raw and returns it
// compact (in b.compacted when it had spaces).
func (h *Handler) checkPayload(b *batch, idx int, raw []byte) json.RawMessage {
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
