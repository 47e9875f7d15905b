package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/wal"
)

// FuzzEventsCursor sends arbitrary cursors, with and without a topic, to GET
// /events on the real wiring (the API over the index and its cursor decoder):
// every answer is a page or a clean 400, never a 500.
func FuzzEventsCursor(f *testing.F) {
	dir := f.TempDir()
	l, err := wal.Open(dir+"/wal", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = l.Close() })
	s := openTestStore(f, dir)
	b := newBackend(l, limits{})
	b.attach(s, nil)
	var entries []dedup.Entry
	for i, e := range testEvents(12) {
		e.Topic = []string{"a", "b", "c"}[i%3]
		entries = append(entries, dedup.Entry{Offset: uint64(i + 1), Event: e})
	}
	if _, err := s.Apply(entries); err != nil {
		f.Fatal(err)
	}
	h := api.New(b, nil)
	get := func(tb testing.TB, topic, cursor string) (int, []byte) {
		q := url.Values{"limit": {"2"}}
		if topic != "" {
			q.Set("topic", topic)
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/events?"+q.Encode(), nil))
		return rec.Code, rec.Body.Bytes()
	}
	// Seeds: the real cursors of each listing, and each used with the
	// other query.
	for _, topic := range []string{"", "a"} {
		var p struct {
			NextCursor *string `json:"next_cursor"`
		}
		_, body := get(f, topic, "")
		if err := json.Unmarshal(body, &p); err != nil || p.NextCursor == nil {
			f.Fatalf("seed listing %q: %s", topic, body)
		}
		f.Add("", *p.NextCursor)
		f.Add("a", *p.NextCursor)
		f.Add("b", *p.NextCursor)
	}
	f.Fuzz(func(t *testing.T, topic, cursor string) {
		status, body := get(t, topic, cursor)
		switch status {
		case http.StatusOK:
			var p struct {
				Events []json.RawMessage `json:"events"`
			}
			if err := json.Unmarshal(body, &p); err != nil || len(p.Events) > 2 {
				t.Fatalf("topic %q cursor %q: bad page %s (%v)", topic, cursor, body, err)
			}
		case http.StatusBadRequest:
			var e struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
				t.Fatalf("topic %q cursor %q: 400 without a JSON error: %s", topic, cursor, body)
			}
		default:
			t.Fatalf("topic %q cursor %q: status %d: %s", topic, cursor, status, body)
		}
	})
}
