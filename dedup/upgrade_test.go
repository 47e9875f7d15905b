package dedup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// genV2 is the event at offset n+1 of the format-2 fixture: the same
// function as in testdata/format2/generate.go, which wrote it.
func genV2(n int) event.Event {
	topics := []string{"orders", "logins", "a/b", "ü-topic", "x"}
	switch {
	case n%53 == 0:
		return event.Event{Topic: "orders", Timestamp: time.Unix(0, 0).UTC(), Source: "gen", Payload: []byte("{}")}
	case n%13 == 0 && n >= 37:
		return genV2(n - 37)
	case n%29 == 0 && n%10 > 0:
		return genV2(n - 1)
	}
	return event.Event{
		Topic:     topics[n%len(topics)],
		EventID:   fmt.Sprintf("id-%d", n),
		Timestamp: time.Date(2025, 10, 20, 12, 0, 0, 0, time.UTC).Add(time.Duration((n*7919)%1000) * time.Second),
		Source:    "gen",
		Payload:   []byte(fmt.Sprintf(`{"n":%d}`, n)),
	}
}

// fixtureV2 copies the format-2 fixture into a temporary directory.
func fixtureV2(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "format2", "index.db"))
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "index.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// TestUpgradeFormat2 converts the fixture written by the format-2 code and
// compares it with an index of this format that applied the same log.
func TestUpgradeFormat2(t *testing.T) {
	old := fixtureV2(t)
	var fe *FormatError
	if _, err := Open(old, nil); !errors.As(err, &fe) || fe.Version != 2 || !errors.Is(err, ErrFormat) {
		t.Fatalf("Open of format 2: %v, want a FormatError of version 2", err)
	}
	upgraded := filepath.Join(t.TempDir(), "index.db")
	rep, err := Upgrade(old, upgraded, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FromFormat != 2 || rep.Events != 353 || rep.Topics != 5 || rep.Checkpoint != 400 {
		t.Fatalf("report %+v", rep)
	}
	// The same log, applied by this version in the same chunks.
	want, _ := mustOpen(t, nil)
	for chunk := range 40 {
		es := make([]Entry, 10)
		for i := range es {
			es[i] = Entry{Offset: uint64(chunk*10 + i + 1), Event: genV2(chunk*10 + i)}
		}
		mustApply(t, want, es)
	}
	got := mustOpenPath(t, upgraded, nil)
	durable := func(st Stats) string {
		return fmt.Sprint(st.Unique, st.Duplicates, st.Malformed, st.Checkpoint, st.LastSeq, st.TopicCount, st.Keys, st.Stored)
	}
	if g, w := durable(mustStats(t, got)), durable(mustStats(t, want)); g != w {
		t.Fatalf("counters %s, want %s", g, w)
	}
	sameEvents := func(g, w []event.Stored) {
		t.Helper()
		if len(g) != len(w) {
			t.Fatalf("%d events, want %d", len(g), len(w))
		}
		for i := range w {
			a, b := g[i], w[i]
			if a.Seq != b.Seq || a.Offset != b.Offset || a.Topic != b.Topic || a.EventID != b.EventID ||
				!a.Timestamp.Equal(b.Timestamp) || string(a.Payload) != string(b.Payload) || a.Source != b.Source {
				t.Fatalf("event %d: %+v, want %+v", i, a, b)
			}
		}
	}
	sameEvents(feedAll(t, got, "", 0, 50), feedAll(t, want, "", 0, 50))
	for _, topic := range []string{"orders", "a/b", "ü-topic"} {
		sameEvents(listAll(t, got, topic, 7), listAll(t, want, topic, 7))
	}
	gt, _, _ := got.Topics("", 100)
	wt, _, _ := want.Topics("", 100)
	if fmt.Sprint(gt) != fmt.Sprint(wt) {
		t.Fatalf("topics %v, want %v", gt, wt)
	}
	// The upgraded index dedups on: a resend of an event of the old index
	// is a duplicate of its seq, and the next new event gets seq 354.
	next := []event.Event{genV2(5), ev("new", "1", baseTime)}
	mustApply(t, got, entries(401, next...))
	v, err := got.Verdicts(401, 402, next)
	if err != nil || !v[0].Duplicate || v[0].Seq == 0 || v[1].Duplicate || v[1].Seq != 354 {
		t.Fatalf("verdicts after the upgrade: %v, %v", v, err)
	}
}

func TestUpgradeRefuses(t *testing.T) {
	old := fixtureV2(t)
	if _, err := Upgrade(old, old, nil); err == nil {
		t.Fatal("Upgrade over an existing file succeeded")
	}
	s, path := mustOpen(t, nil)
	s.Close()
	if _, err := Upgrade(path, filepath.Join(t.TempDir(), "new.db"), nil); !errors.Is(err, ErrUpToDate) {
		t.Fatalf("Upgrade of format 3: %v, want ErrUpToDate", err)
	}
	b, _ := os.ReadFile(old)
	if err := os.WriteFile(old, b[:len(b)/8], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Upgrade(old, filepath.Join(t.TempDir(), "new.db"), nil); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Upgrade of a damaged file: %v, want ErrDamaged", err)
	}
}
