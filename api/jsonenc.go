package api

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/aggregator-dev/aggregator/event"
)

// appendEventJSON appends the JSON object of a stored event, as /events and
// /feed send it, to dst: seq, offset, topic, event_id, timestamp (RFC 3339
// with nanoseconds, UTC), source and payload (stored compact; {} when
// empty). It does what encoding/json would, without reflection.
func appendEventJSON(dst []byte, e *event.Stored) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, e.Seq, 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, e.Offset, 10)
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, e.Topic)
	dst = append(dst, `,"event_id":`...)
	dst = appendJSONString(dst, e.EventID)
	dst = append(dst, `,"timestamp":"`...)
	dst = e.Timestamp.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","source":`...)
	dst = appendJSONString(dst, e.Source)
	dst = append(dst, `,"payload":`...)
	if len(e.Payload) == 0 {
		dst = append(dst, emptyPayload...)
	} else {
		dst = append(dst, e.Payload...)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, escaped as encoding/json
// does (without its HTML escaping): quotes, backslashes and control
// characters, invalid UTF-8 as U+FFFD, and U+2028 and U+2029.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
