package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// feedSamples are events as the service lays them out, and others the fast
// path must hand to encoding/json.
var feedSamples = []string{
	`{"seq":1,"offset":7,"topic":"orders","event_id":"o-1","timestamp":"2026-12-01T11:38:51Z","source":"loadgen","payload":{"sent_ns":"1796125131922460997","n":0}}`,
	`{"seq":2,"offset":9,"topic":"a/b","event_id":"x","timestamp":"2026-12-01T11:38:51Z","source":"s \"payload\": 1","payload":{"payload":{"x":"}"}}}`,
	`{"seq":3,"offset":10,"topic":"esc\"aped","event_id":"e\\u00e9","timestamp":"t","source":"s","payload":[1,2]}`,
	`{"offset":11,"seq":4,"topic":"reordered","event_id":"r","timestamp":"t","source":"s","payload":null}`,
	` {"seq":5,"offset":12,"topic":"t","event_id":"id","timestamp":"t","source":"s","payload":"a string"} `,
}

func TestDecodeFedEventMatchesEncodingJSON(t *testing.T) {
	for _, s := range feedSamples {
		var got, want fedEvent
		if err := decodeFedEvent([]byte(s), &got); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got.Seq, got.Offset, got.Topic, got.EventID) != fmt.Sprint(want.Seq, want.Offset, want.Topic, want.EventID) ||
			!json.Valid(got.Payload) || strings.TrimSpace(string(got.Payload)) != strings.TrimSpace(string(want.Payload)) {
			t.Errorf("%s:\n got %+v %s\nwant %+v %s", s, got, got.Payload, want, want.Payload)
		}
	}
	if fastFedEvent([]byte(feedSamples[2]), &fedEvent{}) || fastFedEvent([]byte(feedSamples[3]), &fedEvent{}) {
		t.Error("the fast path took an event with escapes or another member order")
	}
	if err := decodeFedEvent([]byte(`{"seq":1,`), &fedEvent{}); err == nil {
		t.Error("a cut event decoded")
	}
}

func TestDecodeFeedPage(t *testing.T) {
	body := `{"events":[` + strings.Join(feedSamples, ",") + `],"next_after":5}`
	evs, err := decodeFeedPage([]byte(body))
	if err != nil || len(evs) != len(feedSamples) {
		t.Fatalf("%d events, %v", len(evs), err)
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Errorf("event %d has seq %d", i, e.Seq)
		}
	}
	if evs, err := decodeFeedPage([]byte(`{"events":[],"next_after":0}`)); err != nil || len(evs) != 0 {
		t.Fatalf("empty page: %v %v", evs, err)
	}
	if _, err := decodeFeedPage([]byte(`{"events":[{"seq":1`)); err == nil {
		t.Error("a cut page decoded")
	}
}
