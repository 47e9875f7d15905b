package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// feedAll reads the feed of topic from after to its end, limit events per
// call, and fails when a page breaks seq order.
func feedAll(tb testing.TB, s *Store, topic string, after uint64, limit int) []event.Stored {
	tb.Helper()
	var out []event.Stored
	for calls := 0; ; calls++ {
		if calls > 1_000_000 {
			tb.Fatal("feedAll: no end")
		}
		var page []event.Stored
		last, err := s.Feed(event.FeedQuery{Topic: topic, After: after, Limit: limit}, func(e *event.Stored) bool {
			c := *e
			c.Payload = bytes.Clone(e.Payload)
			page = append(page, c)
			return true
		})
		if err != nil {
			tb.Fatalf("Feed(%q, %d): %v", topic, after, err)
		}
		if len(page) > limit {
			tb.Fatalf("page of %d, limit %d", len(page), limit)
		}
		for _, e := range page {
			if e.Seq <= after {
				tb.Fatalf("seq %d after %d", e.Seq, after)
			}
			after = e.Seq
		}
		if last != after {
			tb.Fatalf("Feed returned last %d, page ends at %d", last, after)
		}
		out = append(out, page...)
		if len(page) < limit {
			return out
		}
	}
}

// Seqs are dense in apply order (the log order of unique events), survive a
// reopen, and the feed lists every unique event once in seq order, per
// topic in arrival order whatever the timestamps.
func TestSeqDenseAndFeedOrder(t *testing.T) {
	s, path := mustOpen(t, &Options{ExpectedKeys: 64, fanout: 2, blockTarget: 64})
	rng := rand.New(rand.NewPCG(3, 4))
	type unique struct {
		topic, id string
		offset    uint64
	}
	var want []unique // in seq order
	seen := map[string]bool{}
	off := uint64(1)
	for range 40 {
		var evs []event.Event
		for range 1 + rng.IntN(50) {
			topic, id := fmt.Sprint("t", rng.IntN(3)), fmt.Sprint(rng.IntN(400))
			// Timestamps go backwards and forwards: the feed ignores them.
			evs = append(evs, ev(topic, id, baseTime.Add(-time.Duration(rng.IntN(1000))*time.Second)))
			if !seen[topic+"/"+id] {
				seen[topic+"/"+id] = true
				want = append(want, unique{topic, id, off + uint64(len(evs)-1)})
			}
		}
		mustApply(t, s, entries(off, evs...))
		off += uint64(len(evs))
	}
	check := func(s *Store) {
		t.Helper()
		if got := s.LastSeq(); got != uint64(len(want)) {
			t.Fatalf("last seq %d, want %d", got, len(want))
		}
		all := feedAll(t, s, "", 0, 7)
		if len(all) != len(want) {
			t.Fatalf("feed has %d events, want %d", len(all), len(want))
		}
		for i, e := range all {
			w := want[i]
			if e.Seq != uint64(i+1) || e.Topic != w.topic || e.EventID != w.id || e.Offset != w.offset {
				t.Fatalf("seq %d: %+v, want %+v", i+1, e, w)
			}
		}
		for _, topic := range []string{"t0", "t1", "t2"} {
			got := feedAll(t, s, topic, 0, 5)
			var exp []uint64
			for i, w := range want {
				if w.topic == topic {
					exp = append(exp, uint64(i+1))
				}
			}
			if len(got) != len(exp) {
				t.Fatalf("topic %s: %d events, want %d", topic, len(got), len(exp))
			}
			for i := range got {
				if got[i].Seq != exp[i] || got[i].Topic != topic {
					t.Fatalf("topic %s event %d: seq %d, want %d", topic, i, got[i].Seq, exp[i])
				}
			}
			// From the middle: exactly the later ones.
			if len(exp) > 2 {
				if rest := feedAll(t, s, topic, exp[1], 3); len(rest) != len(exp)-2 || rest[0].Seq != exp[2] {
					t.Fatalf("topic %s after %d: %d events from %d", topic, exp[1], len(rest), rest[0].Seq)
				}
			}
		}
		// /events carries the same seq for the same event.
		for _, e := range listAll(t, s, "", 11) {
			if w := want[e.Seq-1]; e.EventID != w.id || e.Topic != w.topic || e.Offset != w.offset {
				t.Fatalf("listed %+v has the seq of %+v", e, w)
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{ExpectedKeys: 64, fanout: 2, blockTarget: 64})
	check(s)
	// Every key, sent again, is a duplicate naming its seq, through many
	// merged runs of the seen set.
	var again []event.Event
	for _, w := range want {
		again = append(again, ev(w.topic, w.id, baseTime))
	}
	mustApply(t, s, entries(off, again...))
	for _, fromIndex := range []bool{false, true} {
		if fromIndex {
			s.verdicts.init(verdictRingSize)
		}
		v, err := s.Verdicts(off, off+uint64(len(again))-1, again)
		if err != nil {
			t.Fatal(err)
		}
		for i := range v {
			if !v[i].Duplicate || v[i].Seq != uint64(i+1) {
				t.Fatalf("resent %+v (from index %v): verdict %+v, want a duplicate of seq %d", want[i], fromIndex, v[i], i+1)
			}
		}
	}
}

// A feed page reads limit entries, with a topic filter too, wherever it
// starts.
func TestFeedCostIsOLimit(t *testing.T) {
	s, _ := mustOpen(t, nil)
	fillRandom(t, s, 3000, []string{"a", "b", "c"}, 2)
	var steps int
	s.onListSteps = func(n int) { steps = n }
	for _, topic := range []string{"", "b"} {
		for _, after := range []uint64{0, 1000, 2990} {
			if _, err := s.Feed(event.FeedQuery{Topic: topic, After: after, Limit: 10}, func(*event.Stored) bool { return true }); err != nil {
				t.Fatal(err)
			}
			if steps > 10 {
				t.Fatalf("topic %q after %d: %d steps for 10 events", topic, after, steps)
			}
		}
	}
}

// take refusing an event leaves it out, and the feed says where it stopped.
func TestFeedTakeStops(t *testing.T) {
	s, _ := mustOpen(t, nil)
	mustApply(t, s, entries(1, ev("a", "1", baseTime), ev("a", "2", baseTime), ev("a", "3", baseTime)))
	n := 0
	last, err := s.Feed(event.FeedQuery{Limit: 10}, func(*event.Stored) bool { n++; return n <= 2 })
	if err != nil || last != 2 {
		t.Fatalf("last %d (%v), want 2", last, err)
	}
}

// Verdicts: new events with their seq, duplicates with the seq of the event
// they duplicate, within one chunk too, from memory and from the index.
func TestVerdicts(t *testing.T) {
	s, _ := mustOpen(t, nil)
	first := []event.Event{ev("a", "1", baseTime), ev("a", "2", baseTime), ev("a", "1", baseTime), ev("b", "1", baseTime)}
	mustApply(t, s, entries(1, first...))
	second := []event.Event{ev("b", "1", baseTime), ev("c", "1", baseTime), ev("a", "2", baseTime)}
	mustApply(t, s, entries(5, second...))
	v := func(offset, seq uint64, dup bool) event.Verdict {
		return event.Verdict{Offset: offset, Seq: seq, Duplicate: dup}
	}
	want := []event.Verdict{v(1, 1, false), v(2, 2, false), v(3, 1, true), v(4, 3, false), v(5, 3, true), v(6, 4, false), v(7, 2, true)}
	check := func(how string) {
		t.Helper()
		v1, err := s.Verdicts(1, 4, first)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := s.Verdicts(5, 7, second)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(append(v1, v2...)); got != fmt.Sprint(want) {
			t.Fatalf("%s: verdicts %s, want %v", how, got, want)
		}
	}
	check("from memory")
	s.verdicts.init(verdictRingSize) // forget them: the index answers
	check("from the index")
	if _, err := s.Verdicts(7, 8, second[:2]); err == nil {
		t.Fatal("verdicts of an offset not applied yet: no error")
	}
}

// WaitSeq is woken by the commit that passes it, and ends with its context
// or the store.
func TestWaitSeq(t *testing.T) {
	s, _ := mustOpen(t, nil)
	woken := make(chan error, 1)
	go func() { woken <- s.WaitSeq(context.Background(), 0) }()
	select {
	case err := <-woken:
		t.Fatalf("returned before any event: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	mustApply(t, s, entries(1, ev("a", "1", baseTime)))
	if err := <-woken; err != nil {
		t.Fatal(err)
	}
	if err := s.WaitCheckpoint(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.WaitSeq(ctx, 1); err != context.DeadlineExceeded {
		t.Fatalf("past the deadline: %v", err)
	}
	go func() { woken <- s.WaitSeq(context.Background(), 1) }()
	_ = s.Close()
	if err := <-woken; err != ErrClosed {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// Cursors: created once (idempotent), pending by topic and overall, acks
// move forward only and never past the last seq, they survive a reopen, and
// unknown names, other topics and the bound are refused.
func TestCursors(t *testing.T) {
	s, path := mustOpen(t, nil)
	mustApply(t, s, entries(1, ev("a", "1", baseTime), ev("b", "1", baseTime), ev("a", "2", baseTime), ev("a", "3", baseTime)))
	c, created, err := s.PutCursor("job.a", "a", 3)
	if err != nil || !created || c.Pending != 3 || c.Acked != 0 {
		t.Fatalf("put: %+v %v %v", c, created, err)
	}
	if c, created, err = s.PutCursor("job.a", "a", 3); err != nil || created {
		t.Fatalf("put again: %+v %v %v", c, created, err)
	}
	if _, _, err := s.PutCursor("job.a", "b", 3); event.KindOf(err) != event.Conflict {
		t.Fatalf("put for another topic: %v", err)
	}
	all, _, _ := s.PutCursor("all", "", 3)
	if all.Pending != 4 {
		t.Fatalf("all topics: %+v", all)
	}
	// Seq 3 is a/2: two a events are at or before it.
	if c, err = s.AckCursor("job.a", 3); err != nil || c.Acked != 3 || c.Pending != 1 {
		t.Fatalf("ack 3: %+v %v", c, err)
	}
	if c, err = s.AckCursor("job.a", 1); err != nil || c.Acked != 3 {
		t.Fatalf("ack back to 1: %+v %v", c, err)
	}
	if _, err := s.AckCursor("job.a", 5); event.KindOf(err) != event.Invalid {
		t.Fatalf("ack past the last seq: %v", err)
	}
	if _, _, err := s.PutCursor("third", "", 3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PutCursor("fourth", "", 3); event.KindOf(err) != event.Conflict {
		t.Fatalf("past the bound: %v", err)
	}
	for _, bad := range []string{"", "a/b", string(make([]byte, 65))} {
		if _, err := s.GetCursor(bad); event.KindOf(err) != event.Invalid {
			t.Fatalf("name %q: %v", bad, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, nil)
	if c, err = s.GetCursor("job.a"); err != nil || c.Acked != 3 || c.Topic != "a" || c.Pending != 1 {
		t.Fatalf("after reopen: %+v %v", c, err)
	}
	if err := s.DeleteCursor("job.a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCursor("job.a"); !errors.Is(err, ErrNoCursor) || event.KindOf(err) != event.NotFound {
		t.Fatalf("deleted: %v", err)
	}
	if err := s.DeleteCursor("job.a"); !errors.Is(err, ErrNoCursor) {
		t.Fatalf("delete again: %v", err)
	}
}
