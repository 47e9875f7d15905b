package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"
)

// This file maps the JSON that loggers write onto events: timestamp aliases
// (always), default topic and source, an event_id made from the content
// (id=content) and unknown members kept in the payload (extra=payload).

// eventTime returns the event's timestamp and the member it came from:
// timestamp (RFC 3339), else @timestamp (RFC 3339), else time (a number of
// milliseconds since the Unix epoch, as pino writes it), else date (a number
// of seconds, as Fluent Bit writes it).
func (b *batch) eventTime(idx int, f *fields) (time.Time, string) {
	switch {
	case f.ts != nil:
		return b.timestamp(idx, "timestamp", f.ts), "timestamp"
	case f.atTimestamp != nil:
		return b.timestamp(idx, "@timestamp", f.atTimestamp), "@timestamp"
	case f.time != nil:
		return b.epoch(idx, "time", f.time, time.Millisecond), "time"
	case f.date != nil:
		return b.epoch(idx, "date", f.date, time.Second), "date"
	}
	b.problem(idx, "timestamp", "is required (or one of @timestamp, time, date)")
	return time.Time{}, ""
}

// epoch parses raw, a JSON number of units since 1970-01-01T00:00:00Z
// written as a plain decimal (an optional minus, digits, optionally a dot
// and more digits: no exponent). Digits beyond nanoseconds are dropped.
func (b *batch) epoch(idx int, field string, raw []byte, unit time.Duration) time.Time {
	what := "must be a number of milliseconds since 1970-01-01T00:00:00Z"
	if unit == time.Second {
		what = "must be a number of seconds since 1970-01-01T00:00:00Z"
	}
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		b.problem(idx, field, what)
		return time.Time{}
	}
	if bytes.ContainsAny(raw, "eE") {
		b.problem(idx, field, what+", written without an exponent")
		return time.Time{}
	}
	neg := raw[0] == '-'
	if neg {
		raw = raw[1:]
	}
	whole, frac, _ := bytes.Cut(raw, []byte{'.'})
	if len(whole) > 15 { // past the year 9999 in either unit; and int64 holds it
		b.problem(idx, field, "must be between years 0000 and 9999 in UTC")
		return time.Time{}
	}
	var n int64
	for _, c := range whole {
		n = n*10 + int64(c-'0')
	}
	perSecond := int64(time.Second / unit)
	sec, nsec := n/perSecond, (n%perSecond)*int64(unit)
	// The fraction of a unit, in nanoseconds: its first digits, as many as
	// the unit has nanoseconds' digits (6 for ms, 9 for s).
	scale := int64(unit)
	for i := 0; scale > 1; i++ {
		scale /= 10
		if i < len(frac) {
			nsec += int64(frac[i]-'0') * scale
		}
	}
	if neg && nsec > 0 {
		sec, nsec = -sec-1, int64(time.Second)-nsec
	} else if neg {
		sec = -sec
	}
	return b.inRange(idx, field, time.Unix(sec, nsec))
}

// hasUnusedAlias reports whether f has a timestamp alias other than the
// member used (which extra=payload then keeps in the payload).
func hasUnusedAlias(f *fields, used string) bool {
	return (f.atTimestamp != nil && used != "@timestamp") || (f.time != nil && used != "time") ||
		(f.date != nil && used != "date")
}

// member is one member of an event object: its unescaped name, its key as
// sent (with quotes) and its value; or, for a default from the query, def
// with val nil.
type member struct {
	name, key, val []byte
	def            string
}

// isMapped reports whether the member name is one the event is made of:
// a field, or the timestamp alias used.
func isMapped(name []byte, tsKey string) bool {
	switch string(name) {
	case "topic", "event_id", "timestamp", "source", "payload":
		return true
	}
	return string(name) == tsKey
}

// collect puts the members of obj into b.members, sorted by name, the last
// of equal names only; keep says which to take.
func (b *batch) collect(obj []byte, keep func(name []byte) bool) []member {
	ms := b.members[:0]
	it := newObjectIter(obj)
	for key, val, ok := it.next(); ok; key, val, ok = it.next() {
		if name, good := memberName(key); good && keep(name) {
			ms = append(ms, member{name: name, key: key, val: val})
		}
	}
	b.members = ms
	return sortMembers(ms)
}

// sortMembers sorts ms by name, keeping the last of equal names (the
// member that wins in encoding/json too).
func sortMembers(ms []member) []member {
	slices.SortStableFunc(ms, func(a, c member) int { return bytes.Compare(a.name, c.name) })
	out := ms[:0]
	for i := range ms {
		if i+1 < len(ms) && bytes.Equal(ms[i].name, ms[i+1].name) {
			continue
		}
		out = append(out, ms[i])
	}
	return out
}

// withExtras returns the payload with the event's unknown top-level
// members added (extra=payload): after the payload's own members, sorted by
// name; a name the payload has already keeps the payload's value.
func (h *Handler) withExtras(b *batch, idx int, obj, payload []byte, tsKey string) []byte {
	extras := b.collect(obj, func(name []byte) bool { return !isMapped(name, tsKey) })
	keys := b.keys[:0]
	it := newObjectIter(payload)
	for key, _, ok := it.next(); ok; key, _, ok = it.next() {
		if name, good := memberName(key); good {
			keys = append(keys, name)
		}
	}
	slices.SortFunc(keys, bytes.Compare)
	b.keys = keys

	out := &b.compacted
	start := out.Len()
	inner := payload[1 : len(payload)-1] // payload is compact
	out.WriteByte('{')
	out.Write(inner)
	n := len(inner)
	for _, m := range extras {
		if _, taken := slices.BinarySearchFunc(keys, m.name, bytes.Compare); taken {
			continue
		}
		if n > 0 {
			out.WriteByte(',')
		}
		out.Write(m.key)
		out.WriteByte(':')
		_ = json.Compact(out, m.val) // m.val is valid JSON
		n++
	}
	out.WriteByte('}')
	merged := out.Bytes()[start:]
	return h.checkPayload(b, idx, merged[:len(merged):len(merged)])
}

// contentID returns the event_id of id=content: the hex SHA-256 of the
// event's canonical JSON. That is the object of every top-level member as
// sent plus the query's topic and source when the event has none; members
// sorted by name (bytes of the unescaped UTF-8), the last of equal names
// only; names written as JSON strings (only ", \ and control characters
// escaped); values compacted, their text otherwise as sent (string escapes
// and number spellings kept).
func (b *batch) contentID(obj []byte, f *fields) string {
	ms := b.collect(obj, func([]byte) bool { return true })
	if f.topic == nil && b.q.topic != "" {
		ms = append(ms, member{name: []byte("topic"), def: b.q.topic})
	}
	if f.src == nil && b.q.source != "" {
		ms = append(ms, member{name: []byte("source"), def: b.q.source})
	}
	b.members = ms
	ms = sortMembers(ms)
	c := &b.canon
	c.Reset()
	c.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			c.WriteByte(',')
		}
		writeJSONString(c, m.name)
		c.WriteByte(':')
		if m.val == nil {
			writeJSONString(c, []byte(m.def))
		} else {
			_ = json.Compact(c, m.val)
		}
	}
	c.WriteByte('}')
	sum := sha256.Sum256(c.Bytes())
	return hex.EncodeToString(sum[:])
}

// writeJSONString writes s as a JSON string: ", \ and the control
// characters escaped, every other byte as it is.
func writeJSONString(w *bytes.Buffer, s []byte) {
	const digits = "0123456789abcdef"
	w.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			w.WriteByte('\\')
			w.WriteByte(c)
		case c < 0x20:
			w.WriteString(`\u00`)
			w.WriteByte(digits[c>>4])
			w.WriteByte(digits[c&0xf])
		default:
			w.WriteByte(c)
		}
	}
	w.WriteByte('"')
}
