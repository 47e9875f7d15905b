package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Body formats of a publish request.
const (
	formatObject = "object" // one JSON object per request (batch must be 1)
	formatArray  = "array"  // a JSON array of events
	formatNDJSON = "ndjson" // one JSON object per line, Content-Type application/x-ndjson
)

// genConfig describes the events of one run and how they are cut into
// request bodies.
type genConfig struct {
	Events      int     // total events sent, duplicates included
	Batch       int     // events per request
	Format      string  // formatObject, formatArray or formatNDJSON
	PayloadSize int     // bytes of each event's payload object (at least its minimal size)
	DupFraction float64 // share of Events that repeat an event of an earlier request, in [0, 1)
	Topics      int     // events are spread over this many topics
	RunID       string  // makes event ids unique per run
	Seed        uint64  // chooses which events are repeated
	SameRequest bool    // duplicates may repeat an event of their own request (the reference's stress batch)
	Stamp       bool    // put the send time in each payload ("sent_ns"), for publish-to-delivery latency
	Timestamp   time.Time
}

// key identifies an event for deduplication.
type key struct {
	Topic   string
	EventID string
}

// request is one pre-built publish request.
type request struct {
	body   []byte
	ids    []uint32 // the unique-event numbers in the body, in body order
	stamps []int    // positions in body of the sent_ns digits (with genConfig.Stamp)
}

// The send time in a payload: "sent_ns":"<stampDigits digits>", Unix
// nanoseconds, written into the pre-built body just before it is sent.
const (
	stampField  = `"sent_ns":"`
	stampDigits = 19
)

// stamp writes the time t into r's payloads.
func (r *request) stamp(t time.Time) {
	if len(r.stamps) == 0 {
		return
	}
	var digits [stampDigits]byte
	v := uint64(t.UnixNano())
	for i := stampDigits - 1; i >= 0; i-- {
		digits[i] = byte('0' + v%10)
		v /= 10
	}
	for _, pos := range r.stamps {
		copy(r.body[pos:], digits[:])
	}
}

// sentAt parses the send time stamped in an event's JSON, if any.
func sentAt(eventJSON []byte) (time.Time, bool) {
	i := bytes.Index(eventJSON, []byte(stampField))
	if i < 0 || i+len(stampField)+stampDigits > len(eventJSON) {
		return time.Time{}, false
	}
	var v int64
	for _, c := range eventJSON[i+len(stampField) : i+len(stampField)+stampDigits] {
		if c < '0' || c > '9' {
			return time.Time{}, false
		}
		v = v*10 + int64(c-'0')
	}
	return time.Unix(0, v), v > 0
}

// plan is every request of a run, built before the clock starts.
type plan struct {
	requests    []request
	contentType string
	runID       string
	topics      int
	events      int // events over all requests
	unique      int // distinct events
	duplicates  int // events repeating one of an earlier request
}

// key returns the (topic, event_id) of unique event number id.
func (p *plan) key(id uint32) key {
	return key{
		Topic:   topicName(int(id) % p.topics),
		EventID: p.runID + "-" + strconv.FormatUint(uint64(id), 10),
	}
}

func topicName(i int) string { return "topic-" + strconv.Itoa(i) }

// validName reports whether s is a non-empty run id of [A-Za-z0-9._-].
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

func (c *genConfig) validate() error {
	switch {
	case c.Events < 1:
		return errors.New("events must be at least 1")
	case c.Events > 1<<31:
		return errors.New("events must be at most 2^31")
	case c.Batch < 1:
		return errors.New("batch must be at least 1")
	case c.Format != formatObject && c.Format != formatArray && c.Format != formatNDJSON:
		return fmt.Errorf("unknown format %q (want object, array or ndjson)", c.Format)
	case c.Format == formatObject && c.Batch != 1:
		return errors.New("format object needs batch 1")
	case c.PayloadSize < 0 || c.PayloadSize > 1<<20:
		return errors.New("payload size must be in [0, 1 MiB]")
	case !(c.DupFraction >= 0 && c.DupFraction < 1):
		return errors.New("duplicate fraction must be in [0, 1)")
	case c.Topics < 1:
		return errors.New("topics must be at least 1")
	case !validName(c.RunID):
		return fmt.Errorf("run id %q must be 1-64 characters of [A-Za-z0-9._-]", c.RunID)
	}
	return nil
}

// buildPlan generates every request body of a run.
//
// Of cfg.Events events, round(Events*DupFraction) repeat an event that was
// first placed in an earlier request, so a duplicate never shares a request
// with its original, and no request carries the same event twice (unless
// SameRequest, which lets a duplicate follow its original in one request). The
// duplicates are spread evenly over the run; the first request holds none.
// If the run is too short to place them all (one request), the rest are
// unique events, and plan.duplicates says how many were placed.
func buildPlan(cfg genConfig) (*plan, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &plan{
		contentType: "application/json",
		runID:       cfg.RunID,
		topics:      cfg.Topics,
		events:      cfg.Events,
	}
	if cfg.Format == formatNDJSON {
		p.contentType = "application/x-ndjson"
	}
	ts := cfg.Timestamp.UTC()
	if ts.IsZero() {
		ts = time.Now().UTC().Truncate(time.Second)
	}
	dupTarget := int(float64(cfg.Events)*cfg.DupFraction + 0.5)
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))

	nReq := (cfg.Events + cfg.Batch - 1) / cfg.Batch
	p.requests = make([]request, nReq)
	var next uint32                               // next unique event number
	pool := 0                                     // unique events placed in earlier requests
	inReq := make(map[uint32]struct{}, cfg.Batch) // originals repeated in the current request
	var buf []byte
	for r := range nReq {
		n := min(cfg.Batch, cfg.Events-r*cfg.Batch)
		ids := make([]uint32, 0, n)
		clear(inReq)
		for s := range n {
			slot := r*cfg.Batch + s
			want := int(int64(slot+1) * int64(dupTarget) / int64(cfg.Events))
			placed := false
			if p.duplicates < want && pool > 0 {
				for range 8 {
					o := uint32(rng.IntN(pool))
					if _, dup := inReq[o]; !dup {
						inReq[o] = struct{}{}
						ids = append(ids, o)
						p.duplicates++
						placed = true
						break
					}
				}
			}
			if !placed {
				ids = append(ids, next)
				next++
				if cfg.SameRequest {
					pool = int(next)
				}
			}
		}
		pool = int(next)
		var stamps []int
		buf, stamps = p.appendBody(buf[:0], cfg, ts, ids)
		p.requests[r] = request{body: append([]byte(nil), buf...), ids: ids, stamps: stamps}
	}
	p.unique = int(next)
	return p, nil
}

// appendBody appends the body of a request of events ids and returns the
// positions of its stamps (with cfg.Stamp).
func (p *plan) appendBody(dst []byte, cfg genConfig, ts time.Time, ids []uint32) ([]byte, []int) {
	var stamps []int
	event := func(dst []byte, id uint32) []byte {
		var at int
		dst, at = p.appendEvent(dst, cfg.PayloadSize, cfg.Stamp, ts, id)
		if at >= 0 {
			stamps = append(stamps, at)
		}
		return dst
	}
	switch cfg.Format {
	case formatObject:
		for _, id := range ids {
			dst = event(dst, id)
		}
	case formatArray:
		dst = append(dst, '[')
		for i, id := range ids {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = event(dst, id)
		}
		dst = append(dst, ']')
	case formatNDJSON:
		for _, id := range ids {
			dst = event(dst, id)
			dst = append(dst, '\n')
		}
	}
	return dst, stamps
}

// appendEvent appends the JSON of unique event id, and returns the position
// of its stamp's digits (-1 without stamp). A duplicate is byte-for-byte the
// same event as its original (but for the stamp).
func (p *plan) appendEvent(dst []byte, payloadSize int, stamp bool, ts time.Time, id uint32) ([]byte, int) {
	k := p.key(id)
	dst = append(dst, `{"topic":"`...)
	dst = append(dst, k.Topic...)
	dst = append(dst, `","event_id":"`...)
	dst = append(dst, k.EventID...)
	dst = append(dst, `","timestamp":"`...)
	dst = ts.Add(time.Duration(id)*time.Millisecond).AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","source":"loadgen","payload":`...)
	if !stamp {
		return append(appendPayload(dst, payloadSize, id), '}'), -1
	}
	// {"sent_ns":"<digits>", then the rest of the payload without its '{'.
	dst = append(dst, '{')
	dst = append(dst, stampField...)
	at := len(dst)
	dst = append(dst, strings.Repeat("0", stampDigits)...)
	dst = append(dst, `",`...)
	start := len(dst)
	dst = appendPayload(dst, payloadSize-(len(stampField)+stampDigits+2), id)
	copy(dst[start:], dst[start+1:])
	dst = dst[:len(dst)-1]
	return append(dst, '}'), at
}

const padAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

// appendPayload appends a JSON object of exactly size bytes, or of its
// minimal size {"n":<id>,"pad":""} when size is smaller than that.
func appendPayload(dst []byte, size int, id uint32) []byte {
	start := len(dst)
	dst = append(dst, `{"n":`...)
	dst = strconv.AppendUint(dst, uint64(id), 10)
	dst = append(dst, `,"pad":"`...)
	pad := size - (len(dst) - start) - len(`"}`)
	for i := range max(pad, 0) {
		dst = append(dst, padAlphabet[(int(id)+i)%len(padAlphabet)])
	}
	return append(dst, `"}`...)
}
