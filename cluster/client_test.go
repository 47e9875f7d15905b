package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/event"
)

// httpClient is the tests' client of the aggregator nodes.
var httpClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// post sends one publish request; err is a transport error.
func post(base string, body []byte) (int, []byte, error) {
	resp, err := httpClient.Post(base+"/publish", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func getJSON(base, path string, v any) error {
	resp, err := httpClient.Get(base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

func stats(base string) (api.StatsReply, error) {
	var s api.StatsReply
	return s, getJSON(base, "/stats", &s)
}

// key is an event's identity for the index.
type key struct{ topic, id string }

// identity is where an event sits: its log offset and its seq.
type identity struct{ offset, seq uint64 }

// listAll pages through every topic of a node: key -> identity, failing on a
// key listed twice.
func listAll(tb testing.TB, base string) map[key]identity {
	tb.Helper()
	out := map[key]identity{}
	cursor := ""
	for pages := 0; pages < 100_000; pages++ {
		var page struct {
			Events     []event.Stored `json:"events"`
			NextCursor *string        `json:"next_cursor"`
		}
		q := "/events?limit=1000"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		if err := getJSON(base, q, &page); err != nil {
			tb.Fatal(err)
		}
		for _, e := range page.Events {
			k := key{e.Topic, e.EventID}
			if _, dup := out[k]; dup {
				tb.Fatalf("%s lists %v twice", base, k)
			}
			out[k] = identity{e.Offset, e.Seq}
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			return out
		}
		cursor = *page.NextCursor
	}
	tb.Fatal("too many pages")
	return nil
}

// feedAll reads a node's whole feed (GET /feed) in seq order.
func feedAll(tb testing.TB, base string) []event.Stored {
	tb.Helper()
	var out []event.Stored
	after := uint64(0)
	for pages := 0; pages < 100_000; pages++ {
		var page struct {
			Events    []event.Stored `json:"events"`
			NextAfter uint64         `json:"next_after"`
		}
		if err := getJSON(base, fmt.Sprintf("/feed?limit=10000&after=%d", after), &page); err != nil {
			tb.Fatal(err)
		}
		if len(page.Events) == 0 {
			return out
		}
		out = append(out, page.Events...)
		after = page.NextAfter
	}
	tb.Fatal("too many pages")
	return nil
}

// counters is what must be identical on every node at lag 0.
type counters struct {
	Received, Unique, Duplicates, Checkpoint, LastOffset, LastSeq uint64
	Topics                                                        string
}

func countersOf(s api.StatsReply) counters {
	t, _ := json.Marshal(s.TopicCounts)
	return counters{s.Received, s.UniqueProcessed, s.DuplicateDropped, s.WAL.Checkpoint, s.WAL.LastOffset, s.LastSeq, string(t)}
}
