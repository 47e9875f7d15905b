package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ndjson = "application/x-ndjson"

func TestPublishRejectsBadInput(t *testing.T) {
	valid := mustJSON(t, ev("t", "ok"))
	deep := `{"a":` + strings.Repeat(`[`, DefaultMaxPayloadDepth) + strings.Repeat(`]`, DefaultMaxPayloadDepth) + `}`
	veryDeep := `{"a":` + strings.Repeat(`[`, 100_000) + strings.Repeat(`]`, 100_000) + `}`
	withPayload := func(p string) string {
		return `{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s","payload":` + p + `}`
	}
	withField := func(field, raw string) string {
		m := map[string]json.RawMessage{
			"topic": json.RawMessage(`"t"`), "event_id": json.RawMessage(`"e"`),
			"timestamp": json.RawMessage(`"2025-10-20T00:00:00Z"`), "source": json.RawMessage(`"s"`),
		}
		m[field] = json.RawMessage(raw)
		return mustJSON(t, m)
	}
	many := func(n int, sep, open, closing string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = mustJSON(t, ev("t", fmt.Sprint(i)))
		}
		return open + strings.Join(parts, sep) + closing
	}

	cases := []struct {
		name        string
		contentType string
		body        string
		status      int
		field       string // a detail that must name this field ("" = no check)
		index       int
	}{
		{"empty body", "", "", 400, "", 0},
		{"blank body", "", " \n\t ", 400, "", 0},
		{"malformed", "", `{"topic":`, 400, "", 0},
		{"trailing garbage", "", valid + ` x`, 400, "", 0},
		{"two objects", "", valid + valid, 400, "", 0},
		{"invalid utf-8", "", `{"topic":"` + "\xff\xfe" + `","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s"}`, 400, "", 0},
		{"ndjson malformed line", ndjson, valid + "\n{oops}\n", 400, "", 0},
		{"ndjson blank", ndjson, "\n\n \r\n", 400, "", 0},
		{"string body", "", `"hello"`, 422, "", 0},
		{"number body", "", `42`, 422, "", 0},
		{"null body", "", `null`, 422, "", 0},
		{"empty array", "", `[]`, 422, "", 0},
		{"reference: missing fields", "", `{"topic":"t","event_id":"e"}`, 422, "timestamp", 0},
		{"missing source", "", withField("source", `null`)[0:0] + `{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z"}`, 422, "source", 0},
		{"topic number", "", withField("topic", `7`), 422, "topic", 0},
		{"topic null", "", withField("topic", `null`), 422, "topic", 0},
		{"event_id object", "", withField("event_id", `{}`), 422, "event_id", 0},
		{"source array", "", withField("source", `["s"]`), 422, "source", 0},
		{"topic empty", "", withField("topic", `""`), 422, "topic", 0},
		{"topic blank", "", withField("topic", `"  \t "`), 422, "topic", 0},
		{"topic too long", "", withField("topic", `"`+strings.Repeat("x", 256)+`"`), 422, "topic", 0},
		{"topic too long escaped", "", withField("topic", `"`+strings.Repeat(`\u0078`, 256)+`"`), 422, "topic", 0},
		{"topic control char", "", withField("topic", `"a\u0001b"`), 422, "topic", 0},
		{"event_id newline", "", withField("event_id", `"a\nb"`), 422, "event_id", 0},
		{"source nul", "", withField("source", `"a\u0000"`), 422, "source", 0},
		{"timestamp without zone", "", withField("timestamp", `"2025-10-20T00:00:00"`), 422, "timestamp", 0},
		{"timestamp date only", "", withField("timestamp", `"2025-10-20"`), 422, "timestamp", 0},
		{"timestamp garbage", "", withField("timestamp", `"yesterday"`), 422, "timestamp", 0},
		{"timestamp number", "", withField("timestamp", `1700000000`), 422, "timestamp", 0},
		{"timestamp bad day", "", withField("timestamp", `"2025-02-30T00:00:00Z"`), 422, "timestamp", 0},
		{"timestamp past year 9999 in UTC", "", withField("timestamp", `"9999-12-31T23:59:59-01:00"`), 422, "timestamp", 0},
		{"timestamp huge", "", withField("timestamp", `"`+strings.Repeat("9", 10_000)+`"`), 422, "timestamp", 0},
		{"payload null", "", withPayload(`null`), 422, "payload", 0},
		{"payload array", "", withPayload(`[1,2]`), 422, "payload", 0},
		{"payload string", "", withPayload(`"{}"`), 422, "payload", 0},
		{"payload number", "", withPayload(`1`), 422, "payload", 0},
		{"payload too deep", "", withPayload(deep), 422, "payload", 0},
		{"payload beyond the parser's depth", "", withPayload(veryDeep), 400, "", 0}, // encoding/json stops at 10,000 levels
		{"payload too large", "", withPayload(`{"x":"` + strings.Repeat("a", DefaultMaxPayloadBytes) + `"}`), 422, "payload", 0},
		{"array with a scalar", "", `[` + valid + `,5]`, 422, "", 1},
		{"array with a bad second event", "", `[` + valid + `,` + withField("source", `""`) + `]`, 422, "source", 1},
		{"ndjson with a bad second line", ndjson, valid + "\n\n" + withField("topic", `1`) + "\n", 422, "topic", 1},
		{"ndjson array line", ndjson, valid + "\n[1]\n", 422, "", 1},
		{"body too large", "", `[` + strings.Repeat(valid+",", DefaultMaxBodyBytes/len(valid)+1) + valid + `]`, 413, "", 0},
		{"too many events", "", many(DefaultMaxBatchEvents+1, ",", "[", "]"), 413, "", 0},
		{"too many lines", ndjson, many(DefaultMaxBatchEvents+1, "\n", "", "\n"), 413, "", 0},
	}

	f := newFake()
	h := New(f, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(t, h, http.MethodPost, "/publish", tc.contentType, tc.body)
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tc.status, rec.Body.String())
			}
			e := errorReply(t, rec)
			if tc.field == "" && tc.index == 0 {
				return
			}
			for _, d := range e.Details {
				if d.Field == tc.field && d.Index == tc.index && d.Message != "" {
					return
				}
			}
			t.Fatalf("no detail for index %d field %q in %+v", tc.index, tc.field, e.Details)
		})
	}

	st := statsOf(t, h)
	if st.Received != 0 || st.UniqueProcessed != 0 || st.DuplicateDropped != 0 || len(st.Topics) != 0 {
		t.Fatalf("rejected requests changed the stats: %+v", st)
	}
}

func TestPublishMissingFieldsListsEach(t *testing.T) {
	h := New(newFake(), nil)
	rec := do(t, h, http.MethodPost, "/publish", "", `[{"topic":"t"}, {"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s"}, 3]`)
	if rec.Code != http.StatusUnprocessableEntity {
		t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
	}
	got := map[string]bool{}
	for _, d := range errorReply(t, rec).Details {
		got[fmt.Sprintf("%d/%s", d.Index, d.Field)] = true
	}
	for _, want := range []string{"0/event_id", "0/timestamp", "0/source", "2/"} {
		if !got[want] {
			t.Errorf("missing detail %s in %v", want, got)
		}
	}
	if len(got) != 4 {
		t.Errorf("details %v, want exactly 4", got)
	}
}

func TestPublishDetailsAreBounded(t *testing.T) {
	h := New(newFake(), nil)
	body := "[" + strings.TrimSuffix(strings.Repeat(`{"topic":1},`, 500), ",") + "]"
	rec := do(t, h, http.MethodPost, "/publish", "", body)
	e := errorReply(t, rec)
	if rec.Code != http.StatusUnprocessableEntity || len(e.Details) != maxDetails {
		t.Fatalf("status %d with %d details, want 422 with %d", rec.Code, len(e.Details), maxDetails)
	}
	if !strings.Contains(e.Error, "2000 problems") {
		t.Errorf("error %q does not count every problem", e.Error)
	}
}

func TestPublishContentLengthOverLimit(t *testing.T) {
	h := New(newFake(), &Options{MaxBodyBytes: 100})
	req := httptest.NewRequest(http.MethodPost, "/publish", strings.NewReader(strings.Repeat(" ", 50)))
	req.ContentLength = 101 // announced larger than the limit: refused before reading
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || rec.Header().Get("Connection") != "close" {
		t.Fatalf("status %d, Connection %q, want 413 and close", rec.Code, rec.Header().Get("Connection"))
	}

	// Unknown length (chunked): the limit holds while reading, at 100 bytes
	// exactly.
	valid := mustJSON(t, ev("t", "1"))
	for _, tc := range []struct {
		body   string
		status int
	}{
		{strings.Repeat(" ", 100-len(valid)) + valid, http.StatusOK},
		{strings.Repeat(" ", 101-len(valid)) + valid, http.StatusRequestEntityTooLarge},
		{strings.Repeat(" ", 5000) + valid, http.StatusRequestEntityTooLarge},
	} {
		req := httptest.NewRequest(http.MethodPost, "/publish", io.MultiReader(strings.NewReader(tc.body)))
		req.ContentLength = -1
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.status {
			t.Errorf("chunked body of %d bytes: status %d, want %d: %s", len(tc.body), rec.Code, tc.status, rec.Body.String())
		}
	}
}

func TestPublishAccepts(t *testing.T) {
	f := newFake()
	h := New(f, nil)

	type reply struct {
		Enqueued    int    `json:"enqueued"`
		FirstOffset uint64 `json:"first_offset"`
		LastOffset  uint64 `json:"last_offset"`
	}
	cases := []struct {
		name        string
		contentType string
		body        string
		want        reply
	}{
		{"single", "application/json", mustJSON(t, ev("a", "1")), reply{1, 1, 1}},
		{"array", "", mustJSON(t, []any{ev("a", "2"), ev("b", "1"), ev("a", "1")}), reply{3, 2, 4}},
		{"ndjson", "application/x-ndjson; charset=utf-8", mustJSON(t, ev("c", "1")) + "\r\n\n" + mustJSON(t, ev("c", "2")), reply{2, 5, 6}},
	}
	for _, tc := range cases {
		rec := do(t, h, http.MethodPost, "/publish", tc.contentType, tc.body)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", tc.name, rec.Code, rec.Body.String())
		}
		var got reply
		decodeReply(t, rec, &got)
		if got != tc.want {
			t.Errorf("%s: reply %+v, want %+v", tc.name, got, tc.want)
		}
	}
	st := statsOf(t, h)
	if st.Received != 6 || st.UniqueProcessed != 5 || st.DuplicateDropped != 1 {
		t.Errorf("stats %+v, want received 6, unique 5, duplicates 1", st)
	}
	if want := []string{"a", "b", "c"}; strings.Join(st.Topics, ",") != strings.Join(want, ",") {
		t.Errorf("topics %v, want %v", st.Topics, want)
	}
	if st.TopicCounts["a"] != 2 || st.TopicCounts["c"] != 2 {
		t.Errorf("topic_counts %v", st.TopicCounts)
	}
}

func TestPublishNormalises(t *testing.T) {
	f := newFake()
	h := New(f, nil)
	body := `{"topic":"caf\u00e9","event_id":"x\"y","timestamp":"2025-10-20T12:00:00.123456789+02:00",` +
		`"source":"s","payload":{ "a" : [1, 2, {"b": "c d"}] },"unknown":{"ignored":true},"Topic":"other"}` + "\n" +
		`{"topic":"t","event_id":"e","timestamp":"2025-10-20T00:00:00Z","source":"s","event_id":"later"}`
	rec := do(t, h, http.MethodPost, "/publish", ndjson, body)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
	}
	if len(f.log) != 2 {
		t.Fatalf("log has %d events, want 2", len(f.log))
	}
	e := f.log[0]
	if e.Topic != "café" || e.EventID != `x"y` || e.Source != "s" {
		t.Errorf("strings %q %q %q", e.Topic, e.EventID, e.Source)
	}
	want := time.Date(2025, 10, 20, 10, 0, 0, 123456789, time.UTC)
	if !e.Timestamp.Equal(want) || e.Timestamp.Location() != time.UTC {
		t.Errorf("timestamp %v, want %v in UTC", e.Timestamp, want)
	}
	if string(e.Payload) != `{"a":[1,2,{"b":"c d"}]}` {
		t.Errorf("payload %s, want compact", e.Payload)
	}
	if f.log[1].EventID != "later" || string(f.log[1].Payload) != "{}" {
		t.Errorf("second event %+v: later member must win, payload must default to {}", f.log[1])
	}
}

func TestBackendErrors(t *testing.T) {
	cases := []struct {
		err        error
		status     int
		retryAfter bool
	}{
		{fmt.Errorf("append: %w", event.ErrUnavailable), 503, true},
		{fmt.Errorf("lag: %w", event.ErrOverloaded), 429, true},
		{errors.New("disk on fire"), 500, false},
	}
	for _, tc := range cases {
		f := newFake()
		h := New(f, &Options{RetryAfter: 1500 * time.Millisecond})
		f.set(func(f *fakeBackend) { f.publishErr, f.listErr, f.statsErr = tc.err, tc.err, tc.err })
		for _, req := range [][2]string{{http.MethodPost, "/publish"}, {http.MethodGet, "/events"}, {http.MethodGet, "/stats"}} {
			rec := do(t, h, req[0], req[1], "", mustJSON(t, ev("t", "1")))
			if rec.Code != tc.status {
				t.Errorf("%v on %s: status %d, want %d", tc.err, req[1], rec.Code, tc.status)
			}
			if ra := rec.Header().Get("Retry-After"); (ra == "2") != tc.retryAfter {
				t.Errorf("%v on %s: Retry-After %q", tc.err, req[1], ra)
			}
			e := errorReply(t, rec)
			if tc.status == 500 && strings.Contains(e.Error, "fire") {
				t.Errorf("500 reply leaks the internal error: %q", e.Error)
			}
		}
		if len(f.log) != 0 {
			t.Errorf("%v: events written", tc.err)
		}
	}
}

func TestEvents(t *testing.T) {
	f := newFake()
	h := New(f, nil)
	var batch []any
	for i := range 5 {
		batch = append(batch, ev("a", fmt.Sprint(i)), ev("b", fmt.Sprint(i)))
	}
	if rec := do(t, h, http.MethodPost, "/publish", "", mustJSON(t, batch)); rec.Code != 200 {
		t.Fatalf("publish: %d %s", rec.Code, rec.Body.String())
	}

	type page struct {
		Events []struct {
			Topic     string         `json:"topic"`
			EventID   string         `json:"event_id"`
			Timestamp string         `json:"timestamp"`
			Source    string         `json:"source"`
			Payload   map[string]any `json:"payload"`
			Offset    uint64         `json:"offset"`
		} `json:"events"`
		NextCursor *string `json:"next_cursor"`
	}
	var ids []string
	cursor := ""
	for range 10 {
		rec := do(t, h, http.MethodGet, "/events?topic=a&limit=2&cursor="+cursor, "", "")
		if rec.Code != 200 {
			t.Fatalf("list: %d %s", rec.Code, rec.Body.String())
		}
		var p page
		decodeReply(t, rec, &p)
		for _, e := range p.Events {
			if e.Topic != "a" || e.Payload["id"] != e.EventID || e.Timestamp != "2025-10-20T00:00:00Z" || e.Offset == 0 {
				t.Errorf("event %+v", e)
			}
			ids = append(ids, e.EventID)
		}
		if p.NextCursor == nil {
			break
		}
		cursor = *p.NextCursor
	}
	if strings.Join(ids, ",") != "0,1,2,3,4" {
		t.Errorf("ids %v", ids)
	}
	// Without a limit, a page holds event.DefaultListLimit events.
	var many []any
	for i := range event.DefaultListLimit + 5 {
		many = append(many, ev("c", fmt.Sprint(i)))
	}
	if rec := do(t, h, http.MethodPost, "/publish", "", mustJSON(t, many)); rec.Code != 200 {
		t.Fatalf("publish: %d %s", rec.Code, rec.Body.String())
	}
	var full page
	if rec := do(t, h, http.MethodGet, "/events?topic=c", "", ""); rec.Code != 200 {
		t.Errorf("default limit: status %d", rec.Code)
	} else if decodeReply(t, rec, &full); len(full.Events) != event.DefaultListLimit || full.NextCursor == nil {
		t.Errorf("default page: %d events, next cursor %v", len(full.Events), full.NextCursor)
	}
	rec := do(t, h, http.MethodGet, "/events?topic=none", "", "")
	if rec.Body.String() != `{"events":[],"next_cursor":null}`+"\n" {
		t.Errorf("empty page %q", rec.Body.String())
	}

	for _, q := range []string{"limit=0", "limit=10001", "limit=-1", "limit=x", "limit=1.5", "cursor=zzz",
		"topic=" + strings.Repeat("t", 256), "cursor=" + strings.Repeat("1", 2000)} {
		rec := do(t, h, http.MethodGet, "/events?"+q, "", "")
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, rec.Code)
		}
		errorReply(t, rec)
	}
}

func TestStatsTopicsBounded(t *testing.T) {
	f := newFake()
	h := New(f, &Options{MaxStatsTopics: 3})
	var batch []any
	for i := range 5 {
		batch = append(batch, ev(fmt.Sprint("t", i), "1"))
	}
	do(t, h, http.MethodPost, "/publish", "", mustJSON(t, batch))
	st := statsOf(t, h)
	if !st.TopicsTruncated || strings.Join(st.Topics, ",") != "t0,t1,t2" || len(st.TopicCounts) != 3 {
		t.Errorf("stats %+v, want 3 topics and truncated", st)
	}
	if st.UniqueProcessed != 5 {
		t.Errorf("unique %d", st.UniqueProcessed)
	}
}

func TestRoutes(t *testing.T) {
	f := newFake()
	h := New(f, nil)
	cases := []struct {
		method, path string
		status       int
	}{
		{"GET", "/healthz", 200},
		{"GET", "/readyz", 200},
		{"GET", "/nope", 404},
		{"GET", "/publish", 405},
		{"DELETE", "/events", 405},
		{"POST", "/stats", 405},
	}
	for _, tc := range cases {
		rec := do(t, h, tc.method, tc.path, "", "")
		if rec.Code != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
		if tc.status >= 400 {
			errorReply(t, rec)
		}
		if tc.status == 405 && rec.Header().Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
	f.set(func(f *fakeBackend) { f.readyErr = errors.New("index opening") })
	rec := do(t, h, "GET", "/readyz", "", "")
	if rec.Code != 503 || !strings.Contains(errorReply(t, rec).Error, "index opening") {
		t.Errorf("readyz while not ready: %d %s", rec.Code, rec.Body.String())
	}
	if rec := do(t, h, "GET", "/healthz", "", ""); rec.Code != 200 {
		t.Errorf("healthz while not ready: %d", rec.Code)
	}
}

// mustMetrics returns the API's metrics on a registry of their own.
func mustMetrics(tb testing.TB) *Metrics {
	tb.Helper()
	m, err := NewMetrics(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// TestMetrics checks the API's own metrics; the log's and the index's are
// tested where they are defined, and all of them together on the real wiring
// (cmd/aggregator).
func TestMetrics(t *testing.T) {
	f := newFake()
	m := mustMetrics(t)
	h := New(f, &Options{Metrics: m})
	do(t, h, http.MethodPost, "/publish", "", mustJSON(t, []any{ev("a", "1"), ev("a", "2")}))
	do(t, h, http.MethodPost, "/publish", "", `{`)
	rec := do(t, h, http.MethodGet, "/metrics", "", "")
	if rec.Code != 200 {
		t.Fatalf("metrics: %d", rec.Code)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"aggregator_events_received_total 2",
		`aggregator_publish_request_duration_seconds_count{code="200"} 1`,
		`aggregator_publish_request_duration_seconds_count{code="400"} 1`,
		"aggregator_publish_inflight 0",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want+"\n") && !strings.HasSuffix(want, " ") || !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// A second handler on the same metrics must not panic on registration.
	_ = New(f, &Options{Metrics: m})
	// Registering the API's metrics twice on one registry is an error, not a panic.
	if _, err := NewMetrics(m.Registry()); err == nil {
		t.Error("NewMetrics on a registry that has them: no error")
	}
}

func TestThrottle(t *testing.T) {
	var th throttle
	t0 := time.Unix(1000, 0)
	if ok, n := th.allow(t0); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := th.allow(t0.Add(time.Duration(i) * 100 * time.Millisecond)); ok {
			t.Fatalf("event %d within the second let through", i)
		}
	}
	if ok, n := th.allow(t0.Add(time.Second)); !ok || n != 5 {
		t.Fatalf("after a second: %v, %d skipped, want true, 5", ok, n)
	}
}
