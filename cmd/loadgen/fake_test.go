package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeEvent is an event as the fake service stores it.
type fakeEvent struct {
	Topic     string          `json:"topic"`
	EventID   string          `json:"event_id"`
	Timestamp string          `json:"timestamp"`
	Source    string          `json:"source"`
	Payload   json.RawMessage `json:"payload"`
	Offset    uint64          `json:"offset"`
}

// fakeService is an in-memory stand-in for the aggregator's HTTP API with
// knobs to misbehave. The consumer is synchronous: lag is always 0.
type fakeService struct {
	mu         sync.Mutex
	events     []fakeEvent // unique, in arrival order
	seen       map[key]bool
	received   uint64
	duplicates uint64
	requests   int
	bodies     int // publish bodies read, before any hang

	// misbehaviour
	failEvery     int           // every failEvery-th publish request gets a 503 (0: never)
	loseKeys      map[key]bool  // acknowledged but never stored
	listTwice     int           // list the event at this index twice (-1: none)
	uniqueSkew    int64         // added to unique_processed in /stats
	enqueuedDelta int           // added to "enqueued" in publish responses
	stuckCursor   bool          // GET /events always returns the first page and a cursor
	hang          chan struct{} // publish waits for this to close (nil: no wait)
}

func newFakeService(tb testing.TB) (*fakeService, string) {
	tb.Helper()
	f := &fakeService{seen: map[key]bool{}, loseKeys: map[key]bool{}, listTwice: -1}
	srv := httptest.NewServer(f)
	tb.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/publish":
		f.publish(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/events":
		f.list(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/stats":
		f.stats(w)
	case r.URL.Path == "/readyz" || r.URL.Path == "/healthz":
		w.WriteHeader(http.StatusOK)
	default:
		http.NotFound(w, r)
	}
}

// parseBody decodes a publish body the way the service must: a JSON object,
// a JSON array, or NDJSON.
func parseBody(contentType string, body []byte) ([]fakeEvent, error) {
	var evs []fakeEvent
	if strings.HasPrefix(contentType, "application/x-ndjson") {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, 8<<20)
		for sc.Scan() {
			if len(bytes.TrimSpace(sc.Bytes())) == 0 {
				continue
			}
			var e fakeEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				return nil, err
			}
			evs = append(evs, e)
		}
		return evs, sc.Err()
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		err := json.Unmarshal(body, &evs)
		return evs, err
	}
	var e fakeEvent
	if err := json.Unmarshal(body, &e); err != nil {
		return nil, err
	}
	return []fakeEvent{e}, nil
}

func (f *fakeService) publish(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	hang := f.hang
	f.bodies++
	f.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
	}
	evs, err := parseBody(r.Header.Get("Content-Type"), body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if err != nil {
		http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
		return
	}
	if f.failEvery > 0 && f.requests%f.failEvery == 0 {
		http.Error(w, `{"error":"unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	first := f.received + 1
	for _, e := range evs {
		f.received++
		k := key{e.Topic, e.EventID}
		if f.seen[k] {
			f.duplicates++
			continue
		}
		f.seen[k] = true
		if f.loseKeys[k] {
			continue
		}
		e.Offset = f.received
		f.events = append(f.events, e)
	}
	fmt.Fprintf(w, `{"enqueued":%d,"first_offset":%d,"last_offset":%d}`, len(evs)+f.enqueuedDelta, first, f.received)
}

// requestsSeen counts publish requests whose body was read.
func (f *fakeService) requestsSeen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies
}

func (f *fakeService) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 {
		limit = 100
	}
	from, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
	if f.stuckCursor {
		_ = json.NewEncoder(w).Encode(map[string]any{"events": f.events[:min(limit, len(f.events))], "next_cursor": "1"})
		return
	}
	var all []fakeEvent
	for i, e := range f.events {
		all = append(all, e)
		if i == f.listTwice {
			all = append(all, e)
		}
	}
	end := min(from+limit, len(all))
	page := map[string]any{"events": all[from:end], "next_cursor": nil}
	if end < len(all) {
		page["next_cursor"] = strconv.Itoa(end)
	}
	_ = json.NewEncoder(w).Encode(page)
}

func (f *fakeService) stats(w http.ResponseWriter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[string]uint64{}
	for _, e := range f.events {
		counts[e.Topic]++
	}
	unique := uint64(int64(len(f.events)) + f.uniqueSkew)
	lost := uint64(0)
	for k := range f.loseKeys {
		if f.seen[k] {
			lost++
		}
	}
	s := map[string]any{
		"received":          f.received,
		"unique_processed":  unique,
		"duplicate_dropped": f.duplicates + lost, // keeps received = unique + duplicates
		"topics":            slices.Sorted(maps.Keys(counts)),
		"topic_counts":      counts,
		"uptime_seconds":    1,
		"wal": map[string]any{"first_offset": 1, "last_offset": f.received, "checkpoint": f.received,
			"lag": 0, "segments": 1, "bytes": 0},
	}
	_ = json.NewEncoder(w).Encode(s)
}
