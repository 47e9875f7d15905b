package dedup

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// fillRandom stores n events over topics with random timestamps (years
// 0001..9999 included) and returns them as stored.
func fillRandom(tb testing.TB, s *Store, n int, topics []string, seed uint64) []event.Stored {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	lo := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	hi := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
	var all []event.Stored
	var chunk []Entry
	off := s.Checkpoint() + 1
	for i := range n {
		ts := baseTime.Add(time.Duration(rng.IntN(50)) * time.Second) // many ties
		if i%5 == 0 {
			ts = time.Unix(lo+rng.Int64N(hi-lo), rng.Int64N(1e9)).UTC()
		}
		e := ev(topics[rng.IntN(len(topics))], fmt.Sprintf("id-%d", i), ts)
		chunk = append(chunk, Entry{Offset: off, Event: e})
		all = append(all, event.Stored{Event: e, Offset: off})
		off++
		if len(chunk) == 500 {
			mustApply(tb, s, chunk)
			chunk = nil
		}
	}
	mustApply(tb, s, chunk)
	return all
}

func byTimeOffset(a, b event.Stored) int {
	return cmp.Or(a.Timestamp.Compare(b.Timestamp), cmp.Compare(a.Offset, b.Offset))
}

func sameOrder(tb testing.TB, got, want []event.Stored) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Offset != w.Offset || g.Topic != w.Topic || g.EventID != w.EventID || !g.Timestamp.Equal(w.Timestamp) ||
			string(g.Payload) != string(w.Payload) || g.Source != w.Source {
			tb.Fatalf("event %d: got %+v, want %+v", i, g, w)
		}
	}
}

func TestListByTopicOrder(t *testing.T) {
	s, _ := mustOpen(t, nil)
	topics := []string{"a", "ab", "b", "a\x00", "ünï"}
	all := fillRandom(t, s, 3000, topics, 1)
	for _, topic := range topics {
		var want []event.Stored
		for _, e := range all {
			if e.Topic == topic {
				want = append(want, e)
			}
		}
		slices.SortFunc(want, byTimeOffset)
		for _, limit := range []int{1, 7, 100, len(want), len(want) + 1} {
			sameOrder(t, listAll(t, s, topic, limit), want)
		}
	}
	p, err := s.List(event.ListQuery{Topic: "missing"})
	if err != nil || len(p.Events) != 0 || p.NextCursor != "" || p.Events == nil {
		t.Fatalf("missing topic: %+v, %v", p, err)
	}
}

func TestListAllTopicsOrder(t *testing.T) {
	s, _ := mustOpen(t, nil)
	all := fillRandom(t, s, 2000, []string{"x", "b", "a", "ab", "a\x00"}, 2)
	want := slices.Clone(all)
	slices.SortFunc(want, func(a, b event.Stored) int { return cmp.Or(cmp.Compare(a.Topic, b.Topic), byTimeOffset(a, b)) })
	for _, limit := range []int{1, 13, 2000, 5000} {
		sameOrder(t, listAll(t, s, "", limit), want)
	}
}

func TestListLimitDefaults(t *testing.T) {
	s, _ := mustOpen(t, nil)
	fillRandom(t, s, event.DefaultListLimit+5, []string{"t"}, 3)
	p, err := s.List(event.ListQuery{Topic: "t"})
	if err != nil || len(p.Events) != event.DefaultListLimit || p.NextCursor == "" {
		t.Fatalf("default limit: %d events, cursor %q, %v", len(p.Events), p.NextCursor, err)
	}
}

// Events stored between pages never make a page repeat an event.
func TestListCursorSurvivesInserts(t *testing.T) {
	s, _ := mustOpen(t, nil)
	for i := range 10 {
		mustApply(t, s, entries(uint64(i+1), ev("t", fmt.Sprint(i), baseTime.Add(time.Duration(i)*time.Minute))))
	}
	p1, err := s.List(event.ListQuery{Topic: "t", Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	// One event before the cursor, one after it.
	mustApply(t, s, entries(11, ev("t", "early", baseTime.Add(-time.Hour)), ev("t", "late", baseTime.Add(time.Hour))))
	p2, err := s.List(event.ListQuery{Topic: "t", Limit: 100, Cursor: p1.NextCursor})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range append(p1.Events, p2.Events...) {
		ids = append(ids, e.EventID)
	}
	if want := "[0 1 2 3 4 5 6 7 8 9 late]"; fmt.Sprint(ids) != want {
		t.Fatalf("ids %v, want %s", ids, want)
	}
}

func TestListBadCursor(t *testing.T) {
	s, _ := mustOpen(t, nil)
	fillRandom(t, s, 20, []string{"a", "b"}, 4)
	pa, err := s.List(event.ListQuery{Topic: "a", Limit: 1})
	if err != nil || pa.NextCursor == "" {
		t.Fatalf("page of a: %+v %v", pa, err)
	}
	pall, err := s.List(event.ListQuery{Limit: 1})
	if err != nil || pall.NextCursor == "" {
		t.Fatalf("page of all: %+v %v", pall, err)
	}
	long := make([]byte, event.MaxCursorBytes+1)
	for i := range long {
		long[i] = 'A'
	}
	for name, q := range map[string]event.ListQuery{
		"garbage":            {Topic: "a", Cursor: "!!!"},
		"empty bytes":        {Topic: "a", Cursor: "AA"},
		"other topic":        {Topic: "b", Cursor: pa.NextCursor},
		"topic cursor, all":  {Cursor: pa.NextCursor},
		"all cursor, topic":  {Topic: "a", Cursor: pall.NextCursor},
		"truncated":          {Topic: "a", Cursor: pa.NextCursor[:len(pa.NextCursor)-3]},
		"too long":           {Topic: "a", Cursor: string(long)},
		"bad nanoseconds":    {Topic: "a", Cursor: encodeCursor(cursor{kind: kindTopic, topic: "a", key: append(appendIdxKey(nil, baseTime, 1)[:8], 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1)})},
		"unknown kind":       {Topic: "a", Cursor: encodeCursor(cursor{kind: 9, topic: "a", key: appendIdxKey(nil, baseTime, 1)})},
		"empty cursor topic": {Cursor: encodeCursor(cursor{kind: kindAll, key: appendIdxKey(nil, baseTime, 1)})},
	} {
		if _, err := s.List(q); !errors.Is(err, event.ErrBadCursor) {
			t.Errorf("%s: err = %v, want ErrBadCursor", name, err)
		}
	}
	// A well-formed cursor for a position that holds no event still works.
	c := encodeCursor(cursor{kind: kindTopic, topic: "a", key: appendIdxKey(nil, time.Unix(0, 0), 0)})
	if _, err := s.List(event.ListQuery{Topic: "a", Cursor: c}); err != nil {
		t.Fatalf("synthetic cursor: %v", err)
	}
}

func FuzzDecodeCursor(f *testing.F) {
	f.Add(encodeCursor(cursor{kind: kindTopic, topic: "orders", key: appendIdxKey(nil, baseTime, 42)}))
	f.Add(encodeCursor(cursor{kind: kindAll, topic: "a\x00b", key: appendIdxKey(nil, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), 1)}))
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if !errors.Is(err, event.ErrBadCursor) {
				t.Fatalf("error %v does not wrap ErrBadCursor", err)
			}
			return
		}
		again, err := decodeCursor(encodeCursor(c))
		if err != nil || again.kind != c.kind || again.topic != c.topic || string(again.key) != string(c.key) {
			t.Fatalf("re-encode of %q: %+v vs %+v (%v)", s, c, again, err)
		}
	})
}

// A page reads limit+1 entries (plus one per topic it crosses), wherever
// the cursor is.
func TestListCostIsOLimit(t *testing.T) {
	s, _ := mustOpen(t, nil)
	fillRandom(t, s, 5000, []string{"a", "b", "c"}, 9)
	var steps int
	s.onListSteps = func(n int) { steps = n }
	for _, topic := range []string{"a", ""} {
		cur := ""
		for page := 0; ; page++ {
			p, err := s.List(event.ListQuery{Topic: topic, Cursor: cur, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			if steps > 10+1+3 {
				t.Fatalf("topic %q page %d: %d cursor steps for 10 events", topic, page, steps)
			}
			if cur = p.NextCursor; cur == "" {
				break
			}
		}
	}
}
