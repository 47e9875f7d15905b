package api

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/klauspost/compress/zstd"
)

// post sends body to POST /publish (target may add a query) with the
// given headers (name, value pairs).
func post(tb testing.TB, h http.Handler, target, body string, headers ...string) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func compress(tb testing.TB, coding string, data []byte) string {
	tb.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "zlib":
		w = zlib.NewWriter(&buf)
	case "raw-deflate":
		w, err = flate.NewWriter(&buf, flate.DefaultCompression)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	default:
		tb.Fatalf("no coding %s", coding)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.String()
}

func TestPublishContentEncodings(t *testing.T) {
	body := []byte(mustJSON(t, []any{ev("t", "1"), ev("t", "2")}))
	for _, tc := range []struct{ header, coding string }{
		{"gzip", "gzip"}, {"x-gzip", "gzip"}, {"GZIP", "gzip"}, {"deflate", "zlib"}, {"deflate", "raw-deflate"},
		{"zstd", "zstd"}, {"identity, gzip", "gzip"},
	} {
		f := newFake()
		rec := post(t, New(f, nil), "/publish", compress(t, tc.coding, body), "Content-Encoding", tc.header)
		if rec.Code != http.StatusOK || len(f.log) != 2 {
			t.Errorf("%s (%s): status %d, %d events: %s", tc.header, tc.coding, rec.Code, len(f.log), rec.Body)
		}
	}
	for _, header := range []string{"", "identity"} {
		if rec := post(t, New(newFake(), nil), "/publish", string(body), "Content-Encoding", header); rec.Code != http.StatusOK {
			t.Errorf("Content-Encoding %q: status %d", header, rec.Code)
		}
	}
}

func TestPublishEncodingRefusals(t *testing.T) {
	valid := []byte(mustJSON(t, ev("t", "1")))
	gz := compress(t, "gzip", valid)
	cases := []struct {
		name, header, body string
		status             int
	}{
		{"unknown coding", "br", gz, http.StatusUnsupportedMediaType},
		{"two codings", "gzip, gzip", compress(t, "gzip", []byte(gz)), http.StatusUnsupportedMediaType},
		{"not gzip", "gzip", string(valid), http.StatusBadRequest},
		{"truncated gzip", "gzip", gz[:len(gz)-6], http.StatusBadRequest},
		{"flipped byte", "gzip", gz[:20] + "\xff" + gz[21:], http.StatusBadRequest},
		{"corrupt zstd", "zstd", "\x28\xb5\x2f\xfd" + strings.Repeat("\xff", 40), http.StatusBadRequest},
		{"corrupt deflate", "deflate", "\x78\x9c\xff\xff\xff\xff", http.StatusBadRequest},
		{"empty gzip", "gzip", "", http.StatusBadRequest},
	}
	for _, tc := range cases {
		f := newFake()
		rec := post(t, New(f, nil), "/publish", tc.body, "Content-Encoding", tc.header)
		if rec.Code != tc.status || len(f.log) != 0 {
			t.Errorf("%s: status %d with %d events, want %d and none: %s", tc.name, rec.Code, len(f.log), tc.status, rec.Body)
			continue
		}
		errorReply(t, rec)
		if tc.status == http.StatusUnsupportedMediaType && rec.Header().Get("Accept-Encoding") != acceptedEncodings {
			t.Errorf("%s: 415 without Accept-Encoding", tc.name)
		}
	}
}

// TestPublishDecompressionBomb sends a gzip body that decodes to far more
// than the limit: 413 after at most the limit of output.
func TestPublishDecompressionBomb(t *testing.T) {
	const limit = 64 << 10
	bomb := compress(t, "gzip", bytes.Repeat([]byte(" "), 64<<20)) // 64 MiB of spaces, ~64 KiB
	zbomb := compress(t, "zstd", bytes.Repeat([]byte(" "), 64<<20))
	for name, body := range map[string]string{"gzip": bomb, "zstd": zbomb} {
		h := New(newFake(), &Options{MaxBodyBytes: limit})
		counting := &countingReader{r: strings.NewReader(body)}
		req := httptest.NewRequest(http.MethodPost, "/publish", counting)
		req.Header.Set("Content-Encoding", name)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge || rec.Header().Get("Connection") != "close" {
			t.Errorf("%s bomb: status %d, Connection %q, want 413 and close", name, rec.Code, rec.Header().Get("Connection"))
		}
		// The decoder stopped soon after the limit: it read a small part
		// of the compressed stream.
		if counting.n > int64(len(body))/2 {
			t.Errorf("%s bomb: read %d of %d compressed bytes", name, counting.n, len(body))
		}
	}
	// The compressed body itself is bounded too.
	h := New(newFake(), &Options{MaxBodyBytes: 1000})
	if rec := post(t, h, "/publish", strings.Repeat("x", 2000), "Content-Encoding", "gzip"); rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("compressed body over the limit: %d", rec.Code)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestPublishFormats(t *testing.T) {
	a, b := mustJSON(t, ev("t", "1")), mustJSON(t, ev("t", "2"))
	lines := a + "\n" + b + "\n"
	cases := []struct {
		name, contentType, body string
		status, events          int
	}{
		{"jsonl", "application/jsonl", lines, 200, 2},
		{"x-jsonl", "application/x-jsonl", lines, 200, 2},
		{"octet-stream ndjson", "application/octet-stream", lines, 200, 2},
		{"text/plain ndjson", "text/plain; charset=utf-8", a + "\r\n" + b, 200, 2},
		{"no type ndjson", "", lines, 200, 2},
		{"no type single object", "", a + "\n", 200, 1},
		{"no type pretty object", "", "{\n \"topic\": \"t\", \"event_id\": \"e\",\n \"timestamp\": \"2025-10-20T00:00:00Z\", \"source\": \"s\"\n}\n", 200, 1},
		{"no type array", "", "[" + a + ",\n" + b + "]", 200, 2},
		{"application/json stays strict", "application/json", lines, 400, 0},
		{"+json stays strict", "application/cloudevents+json", lines, 400, 0},
		{"sniffed bad line", "", lines + "{oops\n", 400, 0},
		{"multipart", "multipart/form-data; boundary=x", "--x\r\n\r\n" + a + "\r\n--x--", 400, 0},
	}
	for _, tc := range cases {
		f := newFake()
		rec := post(t, New(f, nil), "/publish", tc.body, "Content-Type", tc.contentType)
		if rec.Code != tc.status || len(f.log) != tc.events {
			t.Errorf("%s: status %d with %d events, want %d with %d: %s", tc.name, rec.Code, len(f.log), tc.status, tc.events, rec.Body)
		}
	}
}

func TestPublishQueryRefusals(t *testing.T) {
	body := mustJSON(t, ev("t", "1"))
	for _, q := range []string{
		"?id=hash", "?extra=drop", "?invalid=maybe", "?nope=1", "?topic=", "?source=%20", "?topic=a&topic=b",
		"?topic=" + strings.Repeat("x", 256), "?topic=a%00b", "?topic=%ff", "?topic=a;b", "?%zz",
		"?" + strings.Repeat("a=1&", 10_000) + "topic=t",
	} {
		f := newFake()
		rec := post(t, New(f, nil), "/publish"+q, body)
		if rec.Code != http.StatusBadRequest || len(f.log) != 0 {
			t.Errorf("%.60s: status %d with %d events, want 400 and none", q, rec.Code, len(f.log))
			continue
		}
		errorReply(t, rec)
	}
}

// TestEventsQueryUnparsable: a query of more than 10,000 parameters is
// dropped whole by r.URL.Query, topic filter included: it must be a 400,
// not a listing of every topic.
func TestEventsQueryUnparsable(t *testing.T) {
	f := newFake()
	h := New(f, nil)
	for _, q := range []string{"topic=a&" + strings.Repeat("x=1&", 10_000), "topic=a&%zz", "topic=a;limit=2"} {
		rec := do(t, h, http.MethodGet, "/events?"+q, "", "")
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%.40s...: status %d, want 400", q, rec.Code)
		}
		errorReply(t, rec)
	}
}

func TestPublishFieldMapping(t *testing.T) {
	cases := []struct {
		name, query, body string
		check             func(e event.Event) string
	}{
		{"defaults", "?topic=logs&source=app", `{"event_id":"1","timestamp":"2025-10-20T00:00:00Z"}`, func(e event.Event) string {
			return want(e.Topic == "logs" && e.Source == "app", "topic %q source %q", e.Topic, e.Source)
		}},
		{"event fields beat defaults", "?topic=logs&source=app", `{"topic":"t","source":"s","event_id":"1","timestamp":"2025-10-20T00:00:00Z"}`, func(e event.Event) string {
			return want(e.Topic == "t" && e.Source == "s", "topic %q source %q", e.Topic, e.Source)
		}},
		{"pino time in ms", "?topic=t&source=s", `{"event_id":"1","time":1760918400123}`, func(e event.Event) string {
			return wantTime(e, time.Date(2025, 10, 20, 0, 0, 0, 123e6, time.UTC))
		}},
		{"time with a fraction of ms", "?topic=t&source=s", `{"event_id":"1","time":1760918400123.4567}`, func(e event.Event) string {
			return wantTime(e, time.Date(2025, 10, 20, 0, 0, 0, 123456700, time.UTC))
		}},
		{"fluent bit date in s", "?topic=t&source=s", `{"event_id":"1","date":1760918400.123456}`, func(e event.Event) string {
			return wantTime(e, time.Date(2025, 10, 20, 0, 0, 0, 123456000, time.UTC))
		}},
		{"negative date", "?topic=t&source=s", `{"event_id":"1","date":-1.5}`, func(e event.Event) string {
			return wantTime(e, time.Date(1969, 12, 31, 23, 59, 58, 5e8, time.UTC))
		}},
		{"@timestamp", "?topic=t&source=s", `{"event_id":"1","@timestamp":"2025-10-20T02:00:00+02:00"}`, func(e event.Event) string {
			return wantTime(e, time.Date(2025, 10, 20, 0, 0, 0, 0, time.UTC))
		}},
		{"timestamp wins over aliases", "?topic=t&source=s", `{"event_id":"1","time":1,"timestamp":"2025-10-20T00:00:00Z"}`, func(e event.Event) string {
			return wantTime(e, time.Date(2025, 10, 20, 0, 0, 0, 0, time.UTC))
		}},
		{"extras dropped by default", "?topic=t&source=s", `{"event_id":"1","time":1,"level":30,"msg":"hi"}`, func(e event.Event) string {
			return want(string(e.Payload) == "{}", "payload %s", e.Payload)
		}},
		{"extra=payload", "?topic=t&source=s&extra=payload", `{"event_id":"1","time":1,"msg":"hi","level":30,"payload":{"a":1,"level":"kept"}}`, func(e event.Event) string {
			return want(string(e.Payload) == `{"a":1,"level":"kept","msg":"hi"}`, "payload %s", e.Payload)
		}},
		{"extra=payload without payload, spaces, unused alias", "?topic=t&source=s&extra=payload", `{"event_id":"1", "timestamp":"2025-10-20T00:00:00Z", "date": 5, "msg" : [1, 2], "msg": {"last" : true}}`, func(e event.Event) string {
			return want(string(e.Payload) == `{"date":5,"msg":{"last":true}}`, "payload %s", e.Payload)
		}},
	}
	for _, tc := range cases {
		f := newFake()
		rec := post(t, New(f, nil), "/publish"+tc.query, tc.body)
		if rec.Code != http.StatusOK || len(f.log) != 1 {
			t.Errorf("%s: status %d: %s", tc.name, rec.Code, rec.Body)
			continue
		}
		if msg := tc.check(f.log[0]); msg != "" {
			t.Errorf("%s: %s", tc.name, msg)
		}
	}
}

func want(ok bool, format string, args ...any) string {
	if ok {
		return ""
	}
	return fmt.Sprintf(format, args...)
}

func wantTime(e event.Event, t time.Time) string {
	return want(e.Timestamp.Equal(t) && e.Timestamp.Location() == time.UTC, "timestamp %v, want %v", e.Timestamp, t)
}

func TestPublishAliasRefusals(t *testing.T) {
	for _, tc := range []struct{ member, field string }{
		{`"time":"2025-10-20T00:00:00Z"`, "time"},
		{`"time":1.7e12`, "time"},
		{`"date":"1760918400"`, "date"},
		{`"date":1e400`, "date"},
		{`"date":999999999999999999`, "date"},
		{`"date":253402300800`, "date"}, // year 10000
		{`"@timestamp":1760918400`, "@timestamp"},
		{`"timestamp":1760918400`, "timestamp"}, // numbers only through the aliases
		{`"level":30`, "timestamp"},
	} {
		rec := post(t, New(newFake(), nil), "/publish?topic=t&source=s", `{"event_id":"1",`+tc.member+`}`)
		if rec.Code != http.StatusUnprocessableEntity {
			t.Errorf("%s: status %d, want 422", tc.member, rec.Code)
			continue
		}
		if d := errorReply(t, rec).Details; len(d) != 1 || d[0].Field != tc.field {
			t.Errorf("%s: details %+v, want one for %s", tc.member, d, tc.field)
		}
	}
	// The merged payload is held to the payload limits.
	h := New(newFake(), &Options{MaxPayloadBytes: 64})
	rec := post(t, h, "/publish?topic=t&source=s&extra=payload", `{"event_id":"1","time":1,"msg":"`+strings.Repeat("x", 64)+`"}`)
	if rec.Code != http.StatusUnprocessableEntity {
		t.Errorf("extras over the payload limit: %d", rec.Code)
	}
}

func TestPublishContentID(t *testing.T) {
	line := `{"level":30,"time":1760918400123,"msg":"hello", "pid":7}`
	f := newFake()
	h := New(f, nil)
	for _, body := range []string{
		line,
		`{"pid":7,"msg":"hello","time":1760918400123,"level":30}`,                // members reordered
		`{"level":30,"time":1760918400123,"msg":"bye","pid":7,"msg":"hello"}`,    // the last msg wins
		`{"level":30,"time":1760918400123,"msg":"hello","pid":7,"topic":"logs"}`, // the default, sent
	} {
		if rec := post(t, h, "/publish?id=content&topic=logs&source=app", body); rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", body, rec.Code, rec.Body)
		}
	}
	canonical := `{"level":30,"msg":"hello","pid":7,"source":"app","time":1760918400123,"topic":"logs"}`
	sum := sha256.Sum256([]byte(canonical))
	for i, e := range f.log {
		if e.EventID != hex.EncodeToString(sum[:]) {
			t.Errorf("event %d: id %s, want the SHA-256 of %s", i, e.EventID, canonical)
		}
	}
	if st := statsOf(t, h); st.UniqueProcessed != 1 || st.DuplicateDropped != 3 {
		t.Errorf("stats %+v: a resent line must be a duplicate", st)
	}
	// Another message, or an explicit id, is another event.
	for _, body := range []string{
		`{"level":30,"time":1760918400123,"msg":"hello!","pid":7}`,
		`{"level":30,"time":1760918400123,"msg":"hello","pid":7,"event_id":"x"}`,
	} {
		post(t, h, "/publish?id=content&topic=logs&source=app", body)
	}
	if st := statsOf(t, h); st.UniqueProcessed != 3 {
		t.Errorf("stats %+v, want 3 unique", st)
	}
	// Without id=content an event_id is required.
	if rec := post(t, h, "/publish?topic=logs&source=app", line); rec.Code != http.StatusUnprocessableEntity {
		t.Errorf("no event_id without id=content: %d", rec.Code)
	}
}

// TestPublishLoneSurrogates: \ud800 and \udc00 both decode to U+FFFD, so
// the second would count as a duplicate of the first: refused instead.
func TestPublishLoneSurrogates(t *testing.T) {
	base := map[string]string{"topic": `"t"`, "event_id": `"e"`, "source": `"s"`, "timestamp": `"2025-10-20T00:00:00Z"`}
	obj := func(field, raw string) string {
		parts := []string{}
		for _, k := range []string{"topic", "event_id", "source", "timestamp"} {
			v := base[k]
			if k == field {
				v = raw
			}
			parts = append(parts, `"`+k+`":`+v)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	for _, field := range []string{"topic", "event_id", "source"} {
		for _, raw := range []string{`"\ud800"`, `"\udc00"`, `"a\ud800b"`, `"\ud800\u0041"`, `"x\udfff"`, `"\uD800"`} {
			f := newFake()
			rec := post(t, New(f, nil), "/publish", obj(field, raw))
			if rec.Code != http.StatusUnprocessableEntity || len(f.log) != 0 {
				t.Errorf("%s=%s: status %d, want 422", field, raw, rec.Code)
				continue
			}
			if d := errorReply(t, rec).Details; len(d) != 1 || d[0].Field != field {
				t.Errorf("%s=%s: details %+v", field, raw, d)
			}
		}
	}
	// A pair is a character; an escaped backslash before "u" is no escape;
	// in the payload, escapes are stored as sent.
	f := newFake()
	h := New(f, nil)
	for _, body := range []string{
		obj("event_id", `"\ud83d\ude00"`), obj("event_id", `"\\ud800"`),
		`{"topic":"t","event_id":"p","source":"s","timestamp":"2025-10-20T00:00:00Z","payload":{"k":"\ud800"}}`,
	} {
		if rec := post(t, h, "/publish", body); rec.Code != http.StatusOK {
			t.Errorf("%s: status %d: %s", body, rec.Code, rec.Body)
		}
	}
	if len(f.log) == 3 && (f.log[0].EventID != "😀" || f.log[1].EventID != `\ud800` || string(f.log[2].Payload) != `{"k":"\ud800"}`) {
		t.Errorf("decoded %q %q %s", f.log[0].EventID, f.log[1].EventID, f.log[2].Payload)
	}
	// A member name with a lone surrogate.
	if rec := post(t, New(newFake(), nil), "/publish?extra=payload", `{"topic":"t","event_id":"e","source":"s","timestamp":"2025-10-20T00:00:00Z","\udc00":1}`); rec.Code != http.StatusUnprocessableEntity {
		t.Errorf("lone surrogate in a member name: %d", rec.Code)
	}
}

func TestPublishInvalidSkip(t *testing.T) {
	good1, good2 := mustJSON(t, ev("t", "1")), mustJSON(t, ev("t", "2"))
	bad := `{"topic":"t","event_id":"3"}`
	type reply struct {
		Enqueued       int             `json:"enqueued"`
		FirstOffset    uint64          `json:"first_offset"`
		LastOffset     uint64          `json:"last_offset"`
		Rejected       []event.Problem `json:"rejected"`
		RejectedEvents int             `json:"rejected_events"`
	}
	for _, tc := range []struct {
		name, contentType, body string
		enqueued, rejected      int
		firstIndex              int
	}{
		{"array", "", "[" + good1 + "," + bad + "," + good2 + ",7]", 2, 2, 1},
		{"ndjson with a malformed line", ndjson, good1 + "\n{oops\n" + good2 + "\n" + bad + "\n", 2, 2, 1},
		{"nothing rejected", "", "[" + good1 + "]", 1, 0, -1},
	} {
		f := newFake()
		rec := post(t, New(f, nil), "/publish?invalid=skip", tc.body, "Content-Type", tc.contentType)
		if rec.Code != http.StatusOK {
			t.Errorf("%s: status %d: %s", tc.name, rec.Code, rec.Body)
			continue
		}
		var r reply
		decodeReply(t, rec, &r)
		if r.Enqueued != tc.enqueued || len(f.log) != tc.enqueued || r.RejectedEvents != tc.rejected ||
			r.LastOffset-r.FirstOffset+1 != uint64(tc.enqueued) || r.Rejected == nil {
			t.Errorf("%s: reply %s with %d written", tc.name, rec.Body, len(f.log))
		}
		if tc.firstIndex >= 0 && (len(r.Rejected) == 0 || r.Rejected[0].Index != tc.firstIndex) {
			t.Errorf("%s: rejected %+v, want the first at index %d", tc.name, r.Rejected, tc.firstIndex)
		}
	}
	// All invalid is still a 422, and malformed JSON of a whole body a 400.
	f := newFake()
	h := New(f, nil)
	if rec := post(t, h, "/publish?invalid=skip", "["+bad+",1]"); rec.Code != http.StatusUnprocessableEntity {
		t.Errorf("all invalid: %d", rec.Code)
	}
	if rec := post(t, h, "/publish?invalid=skip", "["+good1+",{oops]"); rec.Code != http.StatusBadRequest {
		t.Errorf("malformed array: %d", rec.Code)
	}
	if rec := post(t, h, "/publish?invalid=reject", "["+good1+","+bad+"]"); rec.Code != http.StatusUnprocessableEntity || len(f.log) != 0 {
		t.Errorf("invalid=reject: %d", rec.Code)
	}
}

// TestPublishBodyBudget: with a budget of body bytes in flight, a body that
// would pass it is refused with 429 (and the connection closed), while
// bodies within it are accepted; the budget is whole again afterwards.
func TestPublishBodyBudget(t *testing.T) {
	h := New(newFake(), &Options{MaxBodyBytes: 64 << 10, MaxInflightBodyBytes: 100 << 10})
	// One request holds most of the budget by sending a part of its body.
	pr, pw := io.Pipe()
	held := make(chan *httptest.ResponseRecorder)
	go func() {
		req := httptest.NewRequest(http.MethodPost, "/publish", pr)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		held <- rec
	}()
	if _, err := pw.Write([]byte(`[` + strings.Repeat(" ", 60<<10))); err != nil {
		t.Fatal(err)
	}
	big := `[` + strings.Repeat(" ", 60<<10) + mustJSON(t, ev("t", "big")) + `]`
	rec := post(t, h, "/publish", big)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" || rec.Header().Get("Connection") != "close" {
		t.Errorf("body past the budget: status %d, headers %v, want 429 with Retry-After and close", rec.Code, rec.Header())
	}
	if rec := post(t, h, "/publish", mustJSON(t, ev("t", "small"))); rec.Code != http.StatusOK {
		t.Errorf("small body within the budget: %d %s", rec.Code, rec.Body)
	}
	_, _ = pw.Write([]byte(mustJSON(t, ev("t", "held")) + `]`))
	pw.Close()
	if rec := <-held; rec.Code != http.StatusOK {
		t.Errorf("the held request: %d %s", rec.Code, rec.Body)
	}
	if used := h.budget.used.Load(); used != 0 {
		t.Errorf("budget holds %d bytes after every request ended", used)
	}
	if rec := post(t, h, "/publish", big); rec.Code != http.StatusOK {
		t.Errorf("big body once the budget is free: %d %s", rec.Code, rec.Body)
	}
}

func TestCORS(t *testing.T) {
	h := New(newFake(), &Options{CORSOrigins: []string{"https://app.example"}})
	preflight := func(origin string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodOptions, "/publish", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	rec := preflight("https://app.example")
	if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(rec.Header().Get("Access-Control-Allow-Headers"), "Authorization") ||
		!strings.Contains(rec.Header().Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight of a listed origin: %d %v", rec.Code, rec.Header())
	}
	if rec := preflight("https://evil.example"); rec.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight of another origin got CORS headers: %v", rec.Header())
	}
	rec = doHeader(t, h, http.MethodGet, "/healthz", "Origin", "https://app.example", "")
	if rec.Code != http.StatusOK || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example" ||
		rec.Header().Get("Access-Control-Expose-Headers") != "Retry-After" || rec.Header().Get("Vary") != "Origin" {
		t.Errorf("request of a listed origin: %d %v", rec.Code, rec.Header())
	}
	rec = doHeader(t, h, http.MethodGet, "/healthz", "Origin", "https://app.example.evil", "")
	if rec.Header().Get("Access-Control-Allow-Origin") != "" || rec.Header().Get("Vary") != "Origin" {
		t.Errorf("request of another origin: %v", rec.Header())
	}
	// Off by default.
	rec = doHeader(t, New(newFake(), nil), http.MethodGet, "/healthz", "Origin", "https://app.example", "")
	if rec.Header().Get("Access-Control-Allow-Origin") != "" || rec.Header().Get("Vary") != "" {
		t.Errorf("CORS headers without --cors-origin: %v", rec.Header())
	}
	for o, ok := range map[string]bool{"https://app.example": true, "http://localhost:3000": true, "*": false,
		"https://app.example/": false, "https://App.example": false, "ftp://x": false, "https://a.example?x": false} {
		if (ValidOrigin(o) == "") != ok {
			t.Errorf("ValidOrigin(%q) = %q", o, ValidOrigin(o))
		}
	}
}

// TestPublicErrors: an error whose cause names a server path is shown
// without its cause, on publish and on /readyz.
func TestPublicErrors(t *testing.T) {
	cause := fmt.Errorf("write /srv/secret/data/wal/00000001: %w", io.ErrShortWrite)
	err := fmt.Errorf("append: %w", &event.Error{Kind: event.Unavailable, Message: "log cannot write: I/O error", Err: cause})
	f := newFake()
	f.set(func(f *fakeBackend) { f.publishErr, f.readyErr = err, err })
	h := New(f, nil)
	for _, rec := range []*httptest.ResponseRecorder{
		post(t, h, "/publish", mustJSON(t, ev("t", "1"))),
		do(t, h, http.MethodGet, "/readyz", "", ""),
	} {
		if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "/srv") ||
			!strings.Contains(rec.Body.String(), "log cannot write") {
			t.Errorf("status %d body %s: want 503 naming the reason, not the path", rec.Code, rec.Body)
		}
	}
}
