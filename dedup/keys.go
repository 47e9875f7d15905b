package dedup

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// Key layouts. Topics are length-prefixed wherever a key holds more than the
// topic, so no topic or event ID can make two different pairs collide.
//
//	seen key:  uvarint(len(topic)) topic event_id
//	seq key:   seq (8 bytes, big-endian)
//	idx key:   sortable timestamp (12 bytes) offset (8 bytes, big-endian)
//
// The sortable timestamp is the Unix second with its sign bit flipped, as
// 8 bytes big-endian, followed by the nanoseconds as 4 bytes big-endian; byte
// order then equals time order for every instant from year 0001 to 9999.
const (
	tsKeyLen  = 12
	idxKeyLen = tsKeyLen + 8
	seqKeyLen = 8
)

func appendSeqKey(dst []byte, seq uint64) []byte { return binary.BigEndian.AppendUint64(dst, seq) }

// Event value layout (the events bucket, keyed by seq):
//
//	version (1 byte, eventValueVersion) | offset (8 bytes) | apply time (8
//	bytes, Unix nanoseconds) | the event's binary encoding (event.AppendBinary)
const (
	eventValueVersion = 1
	eventHeaderLen    = 17
)

func appendEventValue(dst []byte, offset uint64, appliedAt int64, e *event.Event) []byte {
	dst = append(dst, eventValueVersion)
	dst = binary.BigEndian.AppendUint64(dst, offset)
	dst = binary.BigEndian.AppendUint64(dst, uint64(appliedAt))
	return e.AppendBinary(dst)
}

// decodeEventValue parses an event value; the event's strings are copies,
// its Payload aliases v.
func decodeEventValue(seq uint64, v []byte) (event.Stored, int64, error) {
	if len(v) < eventHeaderLen || v[0] != eventValueVersion {
		return event.Stored{}, 0, fmt.Errorf("seq %d: bad event value", seq)
	}
	e, err := event.Decode(v[eventHeaderLen:])
	if err != nil {
		return event.Stored{}, 0, fmt.Errorf("seq %d: %w", seq, err)
	}
	st := event.Stored{Event: e, Seq: seq, Offset: binary.BigEndian.Uint64(v[1:])}
	return st, int64(binary.BigEndian.Uint64(v[9:])), nil
}

// appendSeenKey appends the seen-set key of (topic, id) to dst.
func appendSeenKey(dst []byte, topic, id string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(topic)))
	dst = append(dst, topic...)
	return append(dst, id...)
}

// appendIdxKey appends the per-topic index key of (ts, offset) to dst.
func appendIdxKey(dst []byte, ts time.Time, offset uint64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(ts.Unix())^(1<<63))
	dst = binary.BigEndian.AppendUint32(dst, uint32(ts.Nanosecond()))
	return binary.BigEndian.AppendUint64(dst, offset)
}

// parseIdxKey is the inverse of appendIdxKey; ok is false for a key of the
// wrong length or with nanoseconds out of range.
func parseIdxKey(k []byte) (ts time.Time, offset uint64, ok bool) {
	if len(k) != idxKeyLen {
		return time.Time{}, 0, false
	}
	sec := int64(binary.BigEndian.Uint64(k) ^ (1 << 63))
	nsec := binary.BigEndian.Uint32(k[8:])
	if nsec >= 1e9 {
		return time.Time{}, 0, false
	}
	return time.Unix(sec, int64(nsec)).UTC(), binary.BigEndian.Uint64(k[tsKeyLen:]), true
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func putU64(v uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v)
}
