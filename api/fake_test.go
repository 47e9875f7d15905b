package api

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
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
	seen       map[string]uint64
	unique     []event.Stored
	verdicts   []event.Verdict // by offset-1
	duplicates uint64
	cursors    map[string]event.Cursor
	changed    chan struct{}
	applyHeld  bool // publishes are durable but not applied (WaitApplied waits)

	publishErr error
	listErr    error
	statsErr   error
	readyErr   error
	lastQuery  event.ListQuery
}

func newFake() *fakeBackend {
	return &fakeBackend{seen: map[string]uint64{}, cursors: map[string]event.Cursor{}, changed: make(chan struct{})}
}

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
		off := uint64(len(f.log))
		if seq, ok := f.seen[key]; ok {
			f.duplicates++
			f.verdicts = append(f.verdicts, event.Verdict{Offset: off, Seq: seq, Duplicate: true})
			continue
		}
		seq := uint64(len(f.unique)) + 1
		f.seen[key] = seq
		f.unique = append(f.unique, event.Stored{Event: e, Seq: seq, Offset: off})
		f.verdicts = append(f.verdicts, event.Verdict{Offset: off, Seq: seq})
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return first, uint64(len(f.log)), nil
}

func (f *fakeBackend) WaitApplied(ctx context.Context, _ uint64) error {
	f.mu.Lock()
	held := f.applyHeld
	f.mu.Unlock()
	if held {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (f *fakeBackend) Verdicts(_ context.Context, first, last uint64, _ []event.Event) ([]event.Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]event.Verdict(nil), f.verdicts[first-1:last]...), nil
}

// List pages through the unique events of a topic; the cursor is the index
// of the next event.
func (f *fakeBackend) List(_ context.Context, q event.ListQuery, take func(*event.Stored) bool) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastQuery = q
	if f.listErr != nil {
		return "", f.listErr
	}
	start := 0
	if q.Cursor != "" {
		n, err := strconv.Atoi(q.Cursor)
		if err != nil || n < 0 {
			return "", event.ErrBadCursor
		}
		start = n
	}
	i, taken := 0, 0
	for _, s := range f.unique {
		if q.Topic != "" && s.Topic != q.Topic {
			continue
		}
		if i >= start {
			if taken == q.Limit || !take(&s) {
				return strconv.Itoa(i), nil
			}
			taken++
		}
		i++
	}
	return "", nil
}

func (f *fakeBackend) Feed(_ context.Context, q event.FeedQuery, take func(*event.Stored) bool) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	last, n := q.After, 0
	for _, s := range f.unique {
		if s.Seq <= q.After || q.Topic != "" && s.Topic != q.Topic {
			continue
		}
		if n == q.Limit || !take(&s) {
			break
		}
		last, n = s.Seq, n+1
	}
	return last, nil
}

func (f *fakeBackend) Changed(context.Context) (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed, nil
}

func (f *fakeBackend) Topics(_ context.Context, after string, limit int) ([]event.TopicCount, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[string]uint64{}
	for _, s := range f.unique {
		counts[s.Topic]++
	}
	var out []event.TopicCount
	for _, t := range slices.Sorted(maps.Keys(counts)) {
		if t <= after {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, event.TopicCount{Topic: t, Count: counts[t]})
	}
	return out, false, nil
}

func (f *fakeBackend) PutCursor(_ context.Context, name, topic string) (event.Cursor, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.cursors[name]; ok {
		if c.Topic != topic {
			return event.Cursor{}, false, event.Errorf(event.Conflict, "exists for another topic")
		}
		return c, false, nil
	}
	c := event.Cursor{Name: name, Topic: topic}
	f.cursors[name] = c
	return c, true, nil
}

func (f *fakeBackend) GetCursor(_ context.Context, name string) (event.Cursor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.cursors[name]
	if !ok {
		return c, event.ErrNotFound
	}
	return c, nil
}

func (f *fakeBackend) AckCursor(_ context.Context, name string, seq uint64) (event.Cursor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.cursors[name]
	if !ok {
		return c, event.ErrNotFound
	}
	c.Acked = max(c.Acked, seq)
	f.cursors[name] = c
	return c, nil
}

func (f *fakeBackend) DeleteCursor(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.cursors[name]; !ok {
		return event.ErrNotFound
	}
	delete(f.cursors, name)
	return nil
}

func (f *fakeBackend) Stats(context.Context) (Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statsErr != nil {
		return Stats{}, f.statsErr
	}
	st := Stats{
		Received:   uint64(len(f.log)),
		Unique:     uint64(len(f.unique)),
		Duplicates: f.duplicates,
		LastSeq:    uint64(len(f.unique)),
	}
	topics := map[string]bool{}
	for _, s := range f.unique {
		topics[s.Topic] = true
	}
	st.TopicCount = uint64(len(topics))
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
