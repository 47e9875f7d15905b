package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aggregator-dev/aggregator/event"
)

// TestObjectIterMatchesEncodingJSON checks the allocation-free walker against
// encoding/json on objects of every shape the tests know.
func TestObjectIterMatchesEncodingJSON(t *testing.T) {
	for _, s := range scanSeeds {
		checkObjectIter(t, []byte(s))
	}
}

var scanSeeds = []string{
	`{}`,
	` { "a" : 1 , "b":[1,2,{"c":"}"}], "d" : "x\"y\\" ,"e":null,"f":true,"g":-1.5e3 } `,
	`{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s","payload":{"k":[[],{}]}}`,
	`{"a\u0062":"\u00e9","":""}`,
	`[{"a":1},{"b":[2]}]`,
	`{"a":{"b":{"c":{"d":[1,[2,[3]]]}}}}`,
}

func checkObjectIter(t *testing.T, b []byte) {
	t.Helper()
	b = trimSpace(b)
	if !json.Valid(b) || len(b) == 0 || b[0] != '{' {
		return
	}
	var want map[string]json.RawMessage
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("unmarshal %q: %v", b, err)
	}
	got := map[string]json.RawMessage{}
	it := newObjectIter(b)
	for key, val, ok := it.next(); ok; key, val, ok = it.next() {
		var k string
		if err := json.Unmarshal(key, &k); err != nil {
			t.Fatalf("%q: key %q is not a JSON string: %v", b, key, err)
		}
		if !json.Valid(val) {
			t.Fatalf("%q: value %q of %q is not JSON", b, val, k)
		}
		got[k] = val
	}
	if len(got) != len(want) {
		// encoding/json folds keys case-insensitively only for structs, so
		// the maps must agree exactly.
		t.Fatalf("%q: walker found %d keys, encoding/json %d", b, len(got), len(want))
	}
	for k, v := range want {
		var cw, cg bytes.Buffer
		_ = json.Compact(&cw, v)
		_ = json.Compact(&cg, got[k])
		if cw.String() != cg.String() {
			t.Fatalf("%q: key %q: walker %q, encoding/json %q", b, k, got[k], v)
		}
	}
}

func FuzzObjectIter(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkObjectIter(t, []byte(s)) })
}

// FuzzPublish feeds arbitrary bodies to POST /publish: the handler must not
// panic, must answer 200, 400, 413 or 422 with a JSON body, and whatever it
// accepted must satisfy the input rules.
func FuzzPublish(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add(s, false)
	}
	f.Add(`{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00+01:00","source":"s"}`, false)
	f.Add(`[{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s","payload":{ "a" : 1 }}]`, false)
	f.Add("{\"topic\":\"t\",\"event_id\":\"e\",\"timestamp\":\"2025-10-20T00:00:00Z\",\"source\":\"s\"}\n\n{}", true)
	f.Add(`{"topic":"\u0000","event_id":"e","timestamp":"x","source":"s","payload":[]}`, false)

	metrics := mustMetrics(f) // shared: a registry per input would dominate the run
	f.Fuzz(func(t *testing.T, body string, nd bool) {
		fb := newFake()
		h := New(fb, &Options{Metrics: metrics, MaxBatchEvents: 50, MaxPayloadDepth: 4, MaxPayloadBytes: 256, MaxBodyBytes: 1 << 16})
		ct := ""
		if nd {
			ct = ndjson
		}
		// Every other input also goes through the field mapping of the
		// query (defaults, aliases, content ids, extras, skipping).
		target := "/publish"
		if len(body)%2 == 1 {
			target = "/publish?topic=ft&source=fs&id=content&extra=payload&invalid=skip"
		}
		rec := do(t, h, http.MethodPost, target, ct, body)
		switch rec.Code {
		case 200:
		case 400, 413, 422:
			errorReply(t, rec)
			if len(fb.log) != 0 {
				t.Fatalf("status %d but %d events written", rec.Code, len(fb.log))
			}
			return
		default:
			t.Fatalf("status %d for %q", rec.Code, body)
		}
		if len(fb.log) == 0 {
			t.Fatalf("200 without events for %q", body)
		}
		for _, e := range fb.log {
			for _, s := range []string{e.Topic, e.EventID, e.Source} {
				if strings.TrimSpace(s) == "" || len(s) > event.MaxFieldBytes || hasControl(s) || !utf8.ValidString(s) {
					t.Fatalf("accepted bad field %q", s)
				}
			}
			if e.Timestamp.Location() != time.UTC {
				t.Fatalf("timestamp not UTC: %v", e.Timestamp)
			}
			// Numbers beyond float64 (1e999999) are valid JSON and kept as
			// sent, so decode them as json.Number.
			var m map[string]any
			dec := json.NewDecoder(bytes.NewReader(e.Payload))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil || m == nil {
				t.Fatalf("payload %q is not an object: %v", e.Payload, err)
			}
			var c bytes.Buffer
			_ = json.Compact(&c, e.Payload)
			if c.String() != string(e.Payload) {
				t.Fatalf("payload %q is not compact", e.Payload)
			}
			if depth, _ := shape(e.Payload); depth > 4 || len(e.Payload) > 256 {
				t.Fatalf("payload %q over the limits", e.Payload)
			}
			// It must survive the binary codec of the log.
			if _, err := event.Decode(e.AppendBinary(nil)); err != nil {
				t.Fatalf("encode/decode: %v", err)
			}
		}
	})
}

// nopBackend acknowledges everything without storing it; it has no other
// method (the embedded nil Backend panics when called).
type nopBackend struct {
	Backend
	next uint64
}

func (n *nopBackend) Publish(_ context.Context, evs []event.Event) (uint64, uint64, error) {
	first := n.next + 1
	n.next += uint64(len(evs))
	return first, n.next, nil
}

// BenchmarkPublish measures the API's own cost per request (read, decode,
// validate, reply) with a backend that does nothing, for batch sizes and
// body formats.
func BenchmarkPublish(b *testing.B) {
	for _, format := range []string{"array", "ndjson"} {
		for _, n := range []int{1, 100, 1000} {
			if format == "ndjson" && n == 1 {
				continue
			}
			b.Run(fmt.Sprintf("format=%s/events=%d", format, n), func(b *testing.B) {
				var parts []string
				for i := range n {
					parts = append(parts, fmt.Sprintf(`{"topic":"orders","event_id":"evt-%08d","timestamp":"2025-10-20T12:00:00.123Z",`+
						`"source":"checkout","payload":{"order":%d,"amount":12.5,"items":["a","b"],"user":{"id":"u-1","tier":"gold"}}}`, i, i))
				}
				body, ct := []byte("["+strings.Join(parts, ",")+"]"), "application/json"
				if format == "ndjson" {
					body, ct = []byte(strings.Join(parts, "\n")+"\n"), ndjson
				}
				h := New(&nopBackend{}, nil)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				req := httptest.NewRequest(http.MethodPost, "/publish", nil)
				req.Header.Set("Content-Type", ct)
				for b.Loop() {
					req.Body = nopCloser{bytes.NewReader(body)}
					req.ContentLength = int64(len(body))
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != 200 {
						b.Fatalf("status %d: %s", rec.Code, rec.Body.String())
					}
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// FuzzEventsQuery feeds arbitrary query strings to GET /events: the handler
// must answer 200 with at most limit events, or a clean 400 with a JSON error
// body, and pass the backend only queries inside the limits.
func FuzzEventsQuery(f *testing.F) {
	for _, s := range []string{
		"", "topic=a&limit=2", "limit=2&cursor=2", "cursor=-1", "cursor=x", "limit=0", "limit=10001",
		"limit=-5", "limit=99999999999999999999", "limit=1e3", "limit=+3", "topic=%ff", "topic=%00",
		"topic=" + strings.Repeat("x", 256), "cursor=" + strings.Repeat("9", 1025), "limit=1&limit=x",
		"%", "topic=a;limit=2", "&&==&", "topic=a%26limit%3D2",
	} {
		f.Add(s)
	}
	fb := newFake()
	h := New(fb, &Options{Metrics: mustMetrics(f)})
	var batch []any
	for i := range 7 {
		batch = append(batch, ev([]string{"a", "b"}[i%2], fmt.Sprint(i)))
	}
	if rec := do(f, h, http.MethodPost, "/publish", "", mustJSON(f, batch)); rec.Code != http.StatusOK {
		f.Fatalf("seed publish: %d", rec.Code)
	}
	f.Fuzz(func(t *testing.T, rawQuery string) {
		req := httptest.NewRequest(http.MethodGet, "/events", nil)
		req.URL.RawQuery = rawQuery
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
			var p struct {
				Events     []json.RawMessage `json:"events"`
				NextCursor *string           `json:"next_cursor"`
			}
			decodeReply(t, rec, &p)
			fb.mu.Lock()
			q := fb.lastQuery
			fb.mu.Unlock()
			if q.Limit < 1 || q.Limit > event.MaxListLimit || len(q.Topic) > event.MaxFieldBytes || len(p.Events) > q.Limit {
				t.Fatalf("query %q: backend got %+v, reply has %d events", rawQuery, q, len(p.Events))
			}
		case http.StatusBadRequest:
			errorReply(t, rec)
		default:
			t.Fatalf("query %q: status %d: %s", rawQuery, rec.Code, rec.Body)
		}
	})
}
