package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aggregator-dev/aggregator/event"
)

// fakeBackend is an in-memory Backend that deduplicates synchronously. Its
// error fields, when set, are returned instead of doing the work.
type fakeBackend struct {
	mu         sync.Mutex
	log        []event.Event // acknowledged, in offset order
	seen       map[string]bool
	unique     []event.Stored
	duplicates uint64

	publishErr error
	listErr    error
	statsErr   error
	readyErr   error
	lastQuery  event.ListQuery
}

func newFake() *fakeBackend { return &fakeBackend{seen: map[string]bool{}} }

func (f *fakeBackend) Publish(_ context.Context, events []event.Event) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.publishErr != nil {
		return 0, 0, f.publishErr
	}
	first := uint64(len(f.log)) + 1
	for _, e := range events {
		e.Payload = bytes.Clone(e.Payload) // the caller reuses it
		f.log = append(f.log, e)
		key := strconv.Quote(e.Topic) + strconv.Quote(e.EventID)
		if f.seen[key] {
			f.duplicates++
			continue
		}
		f.seen[key] = true
		f.unique = append(f.unique, event.Stored{Event: e, Offset: uint64(len(f.log))})
	}
	return first, uint64(len(f.log)), nil
}

// List pages through the unique events of a topic; the cursor is the index
// of the next event.
func (f *fakeBackend) List(_ context.Context, q event.ListQuery) (event.Page, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastQuery = q
	if f.listErr != nil {
		return event.Page{}, f.listErr
	}
	start := 0
	if q.Cursor != "" {
		n, err := strconv.Atoi(q.Cursor)
		if err != nil || n < 0 {
			return event.Page{}, event.ErrBadCursor
		}
		start = n
	}
	var p event.Page
	i := 0
	for _, s := range f.unique {
		if q.Topic != "" && s.Topic != q.Topic {
			continue
		}
		if i >= start {
			if len(p.Events) == q.Limit {
				p.NextCursor = strconv.Itoa(i)
				break
			}
			p.Events = append(p.Events, s)
		}
		i++
	}
	return p, nil
}

func (f *fakeBackend) Stats(context.Context) (Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statsErr != nil {
		return Stats{}, f.statsErr
	}
	st := Stats{
		Received:    uint64(len(f.log)),
		Unique:      uint64(len(f.unique)),
		Duplicates:  f.duplicates,
		TopicCounts: map[string]uint64{},
	}
	for _, s := range f.unique {
		st.TopicCounts[s.Topic]++
	}
	st.WAL = WALStats{FirstOffset: 1, LastOffset: st.Received, Checkpoint: st.Received, Segments: 1}
	st.Dedup = DedupStats{Keys: st.Unique}
	return st, nil
}

func (f *fakeBackend) Ready(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readyErr
}

func (f *fakeBackend) set(fn func(f *fakeBackend)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// do sends one request to h and returns the recorded reply.
func do(tb testing.TB, h http.Handler, method, target, contentType, body string) *httptest.ResponseRecorder {
	tb.Helper()
	return doHeader(tb, h, method, target, "Content-Type", contentType, body)
}

// doHeader sends one request with header name set to value (unless "").
func doHeader(tb testing.TB, h http.Handler, method, target, name, value, body string) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if value != "" {
		req.Header.Set(name, value)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// decodeReply decodes a JSON reply into v, failing the test if it is not JSON.
func decodeReply(tb testing.TB, rec *httptest.ResponseRecorder, v any) {
	tb.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" && !strings.HasPrefix(ct, "text/plain") {
		tb.Fatalf("Content-Type = %q, want application/json", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		tb.Fatalf("reply is not JSON: %v: %q", err, rec.Body.String())
	}
}

func errorReply(tb testing.TB, rec *httptest.ResponseRecorder) errorBody {
	tb.Helper()
	var e errorBody
	decodeReply(tb, rec, &e)
	if e.Error == "" || e.Details == nil {
		tb.Fatalf("error reply lacks error or details: %s", rec.Body.String())
	}
	return e
}

func statsOf(tb testing.TB, h http.Handler) StatsReply {
	tb.Helper()
	rec := do(tb, h, http.MethodGet, "/stats", "", "")
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET /stats = %d: %s", rec.Code, rec.Body.String())
	}
	var s StatsReply
	decodeReply(tb, rec, &s)
	return s
}

func ev(topic, id string) map[string]any {
	return map[string]any{
		"topic": topic, "event_id": id, "timestamp": "2025-10-20T00:00:00Z",
		"source": "test", "payload": map[string]any{"id": id},
	}
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}
