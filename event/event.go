// Package event holds the domain type of the aggregator, the Event a
// publisher sends, and its compact binary encoding, which is the body of
// every write-ahead-log record.
//
// The packages wal, dedup and api import this package; they never import
// each other. Wiring happens in cmd/.
package event

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Event is one published event. Topic, EventID and Source are validated by the
// API before an Event is built; Timestamp is in UTC; Payload is a compact JSON
// object (never empty: "{}" when the publisher sent none).
type Event struct {
	Topic     string          `json:"topic"`
	EventID   string          `json:"event_id"`
	Timestamp time.Time       `json:"timestamp"`
	Source    string          `json:"source"`
	Payload   json.RawMessage `json:"payload"`
}

// encodingVersion is the first byte of every encoded event.
const encodingVersion = 1

// ErrMalformed is returned by Decode when the bytes are not an encoded event.
var ErrMalformed = errors.New("event: malformed encoding")

// AppendBinary appends the binary encoding of e to dst and returns the result.
//
// Layout: version byte (1), then uvarint-length-prefixed topic, event_id and
// source, then the timestamp as a varint of Unix seconds and a uvarint of
// nanoseconds, then the payload bytes up to the end.
func (e *Event) AppendBinary(dst []byte) []byte {
	dst = append(dst, encodingVersion)
	dst = appendString(dst, e.Topic)
	dst = appendString(dst, e.EventID)
	dst = appendString(dst, e.Source)
	dst = binary.AppendVarint(dst, e.Timestamp.Unix())
	dst = binary.AppendUvarint(dst, uint64(e.Timestamp.Nanosecond()))
	return append(dst, e.Payload...)
}

// EncodedSize returns an upper bound of len(e.AppendBinary(nil)).
func (e *Event) EncodedSize() int {
	return 1 + 3*binary.MaxVarintLen64 + len(e.Topic) + len(e.EventID) + len(e.Source) +
		2*binary.MaxVarintLen64 + len(e.Payload)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// Decode parses an encoding made by AppendBinary. The returned Payload aliases
// b; copy it if b is reused.
func Decode(b []byte) (Event, error) {
	var e Event
	if len(b) == 0 || b[0] != encodingVersion {
		return e, fmt.Errorf("%w: unknown version", ErrMalformed)
	}
	rest := b[1:]
	var err error
	if e.Topic, rest, err = readString(rest); err != nil {
		return Event{}, fmt.Errorf("topic: %w", err)
	}
	if e.EventID, rest, err = readString(rest); err != nil {
		return Event{}, fmt.Errorf("event_id: %w", err)
	}
	if e.Source, rest, err = readString(rest); err != nil {
		return Event{}, fmt.Errorf("source: %w", err)
	}
	sec, n := binary.Varint(rest)
	if n <= 0 {
		return Event{}, fmt.Errorf("%w: timestamp seconds", ErrMalformed)
	}
	rest = rest[n:]
	nsec, n := binary.Uvarint(rest)
	if n <= 0 || nsec >= 1e9 {
		return Event{}, fmt.Errorf("%w: timestamp nanoseconds", ErrMalformed)
	}
	rest = rest[n:]
	e.Timestamp = time.Unix(sec, int64(nsec)).UTC()
	e.Payload = rest
	return e, nil
}

func readString(b []byte) (string, []byte, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > math.MaxInt32 || uint64(len(b)-n) < l {
		return "", nil, ErrMalformed
	}
	return string(b[n : n+int(l)]), b[n+int(l):], nil
}
