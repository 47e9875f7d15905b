package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// The hand-written encoder agrees with encoding/json (HTML escaping off).
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\x00\x1f\n\r\t", "é\u2028\u2029😀", "bad \xff utf8", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s: %v", s, got, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Fatalf("%q: decodes to %q, encoding/json gives %q", s, back, wantBack)
		}
	})
}

func TestAppendEventJSON(t *testing.T) {
	e := event.Stored{Seq: 7, Offset: 9, Event: event.Event{Topic: "t\"", EventID: "id", Source: "s",
		Timestamp: time.Date(2025, 10, 20, 12, 0, 0, 500, time.UTC), Payload: json.RawMessage(`{"a":[1,2]}`)}}
	var got map[string]any
	if err := json.Unmarshal(appendEventJSON(nil, &e), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"seq": 7.0, "offset": 9.0, "topic": "t\"", "event_id": "id", "source": "s",
		"timestamp": "2025-10-20T12:00:00.0000005Z", "payload": map[string]any{"a": []any{1.0, 2.0}}}
	if gb, _ := json.Marshal(got); string(gb) != string(must(json.Marshal(want))) {
		t.Fatalf("got %s, want %s", gb, must(json.Marshal(want)))
	}
	e.Payload = nil
	if err := json.Unmarshal(appendEventJSON(nil, &e), &got); err != nil || len(got["payload"].(map[string]any)) != 0 {
		t.Fatalf("empty payload: %v %v", got["payload"], err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
