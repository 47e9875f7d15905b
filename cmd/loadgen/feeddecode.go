package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// A follower measures the service, so its own cost per event matters: on
// a 2-core machine encoding/json's decoding of every delivered event (about
// 5 µs each) held a feed read at about 200,000 events/s whatever the server
// did. The decoders here read the service's own layout of a feed event
// ({"seq":N,"offset":N,"topic":"…","event_id":"…",…,"payload":…}) with a
// few byte searches, and fall back to encoding/json for anything else, so a
// change of layout costs speed, never correctness.

// decodeFedEvent decodes one feed event into e.
func decodeFedEvent(data []byte, e *fedEvent) error {
	if fastFedEvent(data, e) {
		return nil
	}
	*e = fedEvent{}
	return json.Unmarshal(data, e)
}

// fastFedEvent decodes the service's layout of an event; false when data
// is laid out otherwise (or has escapes in its topic or ID).
func fastFedEvent(data []byte, e *fedEvent) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimSpace(data), []byte(`{"seq":`))
	if !ok {
		return false
	}
	var seq, off uint64
	if seq, rest, ok = cutUint(rest, `,"offset":`); !ok {
		return false
	}
	if off, rest, ok = cutUint(rest, `,"topic":"`); !ok {
		return false
	}
	var topic, id []byte
	if topic, rest, ok = cutPlainString(rest, `,"event_id":"`); !ok {
		return false
	}
	if id, rest, ok = cutPlainString(rest, ``); !ok {
		return false
	}
	// The payload is the last member: after its key comes the value, then
	// the event's closing brace.
	i := bytes.Index(rest, []byte(`"payload":`))
	if i < 0 || rest[len(rest)-1] != '}' {
		return false
	}
	payload := rest[i+len(`"payload":`) : len(rest)-1]
	*e = fedEvent{Seq: seq, Offset: off, Topic: string(topic), EventID: string(id),
		Payload: append(json.RawMessage(nil), payload...)}
	return true
}

// cutUint parses the digits at the start of b, which must be followed by
// sep, and returns the value and what follows sep.
func cutUint(b []byte, sep string) (uint64, []byte, bool) {
	n := 0
	for n < len(b) && '0' <= b[n] && b[n] <= '9' {
		n++
	}
	v, err := strconv.ParseUint(string(b[:n]), 10, 64)
	if err != nil {
		return 0, nil, false
	}
	rest, ok := bytes.CutPrefix(b[n:], []byte(sep))
	return v, rest, ok
}

// cutPlainString returns the string body at the start of b, up to its
// closing quote, which must have no escapes and be followed by sep.
func cutPlainString(b []byte, sep string) ([]byte, []byte, bool) {
	q := bytes.IndexByte(b, '"')
	if q < 0 || bytes.IndexByte(b[:q], '\\') >= 0 {
		return nil, nil, false
	}
	rest, ok := bytes.CutPrefix(b[q+1:], []byte(sep))
	return b[:q], rest, ok
}

// decodeFeedPage decodes the events of a GET /feed (or /consumers/…/next)
// reply.
func decodeFeedPage(body []byte) ([]fedEvent, error) {
	if evs, ok := fastFeedPage(body); ok {
		return evs, nil
	}
	var p struct {
		Events []fedEvent `json:"events"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("decode feed page: %w", err)
	}
	return p.Events, nil
}

// fastFeedPage splits the service's layout of a page, {"events":[…],…},
// into its events; false for any other layout.
func fastFeedPage(body []byte) ([]fedEvent, bool) {
	rest, ok := bytes.CutPrefix(bytes.TrimSpace(body), []byte(`{"events":[`))
	if !ok {
		return nil, false
	}
	var evs []fedEvent
	for len(rest) > 0 && rest[0] != ']' {
		n := valueEnd(rest)
		if n < 0 {
			return nil, false
		}
		var e fedEvent
		if !fastFedEvent(rest[:n], &e) {
			return nil, false
		}
		evs = append(evs, e)
		rest = rest[n:]
		if len(rest) > 0 && rest[0] == ',' {
			rest = rest[1:]
		}
	}
	return evs, len(rest) > 0
}

// valueEnd returns the length of the object or array at the start of b,
// or -1 when it does not end in b. It follows strings and escapes, not the
// rest of the grammar: what it cuts is decoded afterwards.
func valueEnd(b []byte) int {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}
