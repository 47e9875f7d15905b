package dedup

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/internal/poll"
	bolt "go.etcd.io/bbolt"
)

// fakeClock is the injected clock of retention tests: no test sleeps for
// an age to pass.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: baseTime} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openClocked opens a store whose clock is clk.
func openClocked(tb testing.TB, clk *fakeClock, opts *Options) (*Store, string) {
	tb.Helper()
	s, path := mustOpen(tb, opts)
	s.now = clk.now
	return s, path
}

// seqsOf returns the seqs of events, in order.
func seqsOf(evs []event.Stored) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// topicEvents returns n events of topic with ids from first on.
func topicEvents(topic string, first, n int) []event.Event {
	out := make([]event.Event, n)
	for i := range out {
		out[i] = ev(topic, fmt.Sprint(first+i), baseTime.Add(time.Duration(first+i)*time.Second))
	}
	return out
}

// checkInvariants asserts the counters' invariants and that every listing
// agrees with them.
func checkInvariants(tb testing.TB, s *Store) Stats {
	tb.Helper()
	st := mustStats(tb, s)
	if st.Unique+st.Duplicates+st.Malformed != st.Checkpoint || st.Stored != st.Unique-st.Expired {
		tb.Fatalf("counters do not add up: %+v", st)
	}
	feed := feedAll(tb, s, "", 0, 7)
	list := listAll(tb, s, "", 7)
	if uint64(len(feed)) != st.Stored || uint64(len(list)) != st.Stored {
		tb.Fatalf("feed lists %d, /events %d, stored %d", len(feed), len(list), st.Stored)
	}
	if len(feed) > 0 && feed[0].Seq != st.FirstSeq || len(feed) == 0 && st.FirstSeq != st.LastSeq+1 {
		tb.Fatalf("first seq %d, feed starts at %v", st.FirstSeq, seqsOf(feed[:min(1, len(feed))]))
	}
	return st
}

func TestRetentionByCount(t *testing.T) {
	s, path := mustOpen(t, &Options{Retention: event.Retention{Events: 5}})
	mustApply(t, s, entries(1, topicEvents("a", 0, 8)...))                                    // a: seqs 1-8
	mustApply(t, s, entries(9, append(topicEvents("b", 0, 3), topicEvents("a", 8, 4)...)...)) // b: 9-11, a: 12-15
	st := checkInvariants(t, s)
	if st.Unique != 15 || st.Expired != 7 || st.Stored != 8 || st.FirstSeq != 8 {
		t.Fatalf("stats %+v", st)
	}
	if got := fmt.Sprint(seqsOf(feedAll(t, s, "a", 0, 100))); got != "[8 12 13 14 15]" {
		t.Fatalf("topic a keeps %s, want the newest 5", got)
	}
	if got := fmt.Sprint(seqsOf(listAll(t, s, "b", 100))); got != "[9 10 11]" {
		t.Fatalf("topic b %s", got)
	}
	// A reader behind the oldest stored seq gets the oldest stored events.
	if got := fmt.Sprint(seqsOf(feedAll(t, s, "", 2, 3))); got != "[8 9 10 11 12 13 14 15]" {
		t.Fatalf("feed after 2: %s", got)
	}
	// A late resend of an expired event is a duplicate of its (gone) seq.
	res := mustApply(t, s, entries(16, ev("a", "0", baseTime)))
	if res.Unique != 0 || res.Duplicates != 1 {
		t.Fatalf("resend of an expired event: %+v", res)
	}
	if v, err := s.Verdicts(16, 16, []event.Event{ev("a", "0", baseTime)}); err != nil || !v[0].Duplicate || v[0].Seq != 1 {
		t.Fatalf("verdict of the resend: %v, %v", v, err)
	}
	// Seqs stay dense and are never reused; the counters survive a reopen.
	mustApply(t, s, entries(17, ev("c", "1", baseTime)))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{Retention: event.Retention{Events: 5}})
	st = checkInvariants(t, s)
	if st.LastSeq != 16 || st.Expired != 7 || st.Checkpoint != 17 {
		t.Fatalf("after reopen: %+v", st)
	}
}

func TestRetentionByAge(t *testing.T) {
	clk := newFakeClock()
	s, _ := openClocked(t, clk, &Options{Retention: event.Retention{Age: 90 * time.Minute}})
	mustApply(t, s, entries(1, topicEvents("a", 0, 3)...)) // applied at 0
	clk.advance(time.Hour)
	mustApply(t, s, entries(4, topicEvents("a", 3, 2)...)) // at 1h
	clk.advance(time.Hour)
	mustApply(t, s, entries(6, topicEvents("b", 0, 1)...)) // at 2h: the events of 0 are 2h old
	if st := checkInvariants(t, s); st.Expired != 3 || st.FirstSeq != 4 {
		t.Fatalf("at 2h: %+v", st)
	}
	// Idle: Maintain expires by age without anything applied.
	clk.advance(40 * time.Minute) // 2h40: the events of 1h are 1h40 old
	if more, err := s.Maintain(); err != nil || more {
		t.Fatalf("Maintain: more %v, %v", more, err)
	}
	st := checkInvariants(t, s)
	if st.Expired != 5 || st.FirstSeq != 6 || st.Checkpoint != 6 {
		t.Fatalf("at 2h40: %+v", st)
	}
	// Nothing due: a step commits nothing (and says so).
	if more, err := s.Maintain(); err != nil || more {
		t.Fatalf("idle Maintain: %v %v", more, err)
	}
	// A clock that goes back does not make apply times go back.
	clk.advance(-3 * time.Hour)
	mustApply(t, s, entries(7, topicEvents("b", 1, 1)...))
	clk.advance(3*time.Hour + 91*time.Minute)
	if _, err := s.Maintain(); err != nil {
		t.Fatal(err)
	}
	if st := checkInvariants(t, s); st.Stored != 0 || st.FirstSeq != 8 {
		t.Fatalf("everything old: %+v", st)
	}
}

func TestRetentionOverrides(t *testing.T) {
	three := uint64(3)
	zero := uint64(0)
	hour := time.Hour
	s, path := mustOpen(t, &Options{Retention: event.Retention{Events: 2}})
	if _, err := s.SetRetention("keep", event.RetentionOverride{Events: &zero}); err != nil {
		t.Fatal(err)
	}
	tr, err := s.SetRetention("three", event.RetentionOverride{Events: &three, Age: &hour})
	if err != nil || tr.Effective != (event.Retention{Events: 3, Age: time.Hour}) {
		t.Fatalf("SetRetention: %+v, %v", tr, err)
	}
	if _, err := s.SetRetention("", event.RetentionOverride{}); event.KindOf(err) != event.Invalid {
		t.Fatalf("empty topic: %v", err)
	}
	neg := -time.Second
	if _, err := s.SetRetention("x", event.RetentionOverride{Age: &neg}); event.KindOf(err) != event.Invalid {
		t.Fatalf("negative age: %v", err)
	}
	var evs []event.Event
	for _, topic := range []string{"keep", "three", "default"} {
		evs = append(evs, topicEvents(topic, 0, 6)...)
	}
	mustApply(t, s, entries(1, evs...))
	checkInvariants(t, s)
	for topic, want := range map[string]int{"keep": 6, "three": 3, "default": 2} {
		if got := len(feedAll(t, s, topic, 0, 100)); got != want {
			t.Errorf("topic %s keeps %d events, want %d", topic, got, want)
		}
	}
	// Overrides are durable; an empty one removes it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{Retention: event.Retention{Events: 2}})
	tr, err = s.Retention("keep")
	if err != nil || tr.Override.Events == nil || *tr.Override.Events != 0 || tr.Effective != (event.Retention{}) {
		t.Fatalf("after reopen: %+v, %v", tr, err)
	}
	if _, err := s.SetRetention("keep", event.RetentionOverride{}); err != nil {
		t.Fatal(err)
	}
	if tr, _ := s.Retention("keep"); !tr.Override.IsZero() || tr.Effective.Events != 2 {
		t.Fatalf("removed override: %+v", tr)
	}
	if _, err := s.Maintain(); err != nil {
		t.Fatal(err)
	}
	if got := len(feedAll(t, s, "keep", 0, 100)); got != 2 {
		t.Fatalf("topic keep holds %d events after its override was removed, want 2", got)
	}
	checkInvariants(t, s)
}

// TestRetentionOverrideWithoutDefault: with no default retention, only the
// topics with an override are looked at.
func TestRetentionOverrideWithoutDefault(t *testing.T) {
	one := uint64(1)
	s, _ := mustOpen(t, nil)
	mustApply(t, s, entries(1, append(topicEvents("a", 0, 4), topicEvents("b", 0, 4)...)...))
	if _, err := s.SetRetention("b", event.RetentionOverride{Events: &one}); err != nil {
		t.Fatal(err)
	}
	if more, err := s.Maintain(); err != nil || more {
		t.Fatalf("Maintain: %v %v", more, err)
	}
	if st := checkInvariants(t, s); st.Expired != 3 || len(feedAll(t, s, "a", 0, 10)) != 4 {
		t.Fatalf("%+v", st)
	}
}

// TestExpiryBoundedSteps: no step expires more than ExpireBatch events;
// later steps finish the work.
func TestExpiryBoundedSteps(t *testing.T) {
	s, _ := mustOpen(t, &Options{Retention: event.Retention{Events: 2}, ExpireBatch: 4})
	mustApply(t, s, entries(1, topicEvents("a", 0, 20)...))
	if st := checkInvariants(t, s); st.Expired != 4 {
		t.Fatalf("the chunk's own step expired %d, want 4", st.Expired)
	}
	steps := 0
	for more := true; more; steps++ {
		before := mustStats(t, s).Expired
		var err error
		if more, err = s.Maintain(); err != nil {
			t.Fatal(err)
		}
		if n := mustStats(t, s).Expired - before; n > 4 {
			t.Fatalf("a step expired %d", n)
		}
	}
	if st := checkInvariants(t, s); st.Stored != 2 || steps < 4 {
		t.Fatalf("after %d steps: %+v", steps, st)
	}
}

func TestCursorPendingAfterExpiry(t *testing.T) {
	s, _ := mustOpen(t, &Options{Retention: event.Retention{Events: 3}})
	for _, name := range []string{"all", "a"} {
		topic := ""
		if name == "a" {
			topic = "a"
		}
		if _, _, err := s.PutCursor(name, topic, 0); err != nil {
			t.Fatal(err)
		}
	}
	mustApply(t, s, entries(1, append(topicEvents("a", 0, 10), topicEvents("b", 0, 1)...)...))
	for name, want := range map[string]uint64{"all": 4, "a": 3} {
		c, err := s.GetCursor(name)
		if err != nil || c.Pending != want {
			t.Errorf("cursor %s: %+v, %v; want %d pending (the stored events)", name, c, err, want)
		}
	}
	if c, err := s.AckCursor("a", 9); err != nil || c.Pending != 1 {
		t.Fatalf("ack 9: %+v %v", c, err)
	}
}

// known reports whether the seen set holds (topic, id), without changing
// anything.
func known(tb testing.TB, s *Store, topic, id string) bool {
	tb.Helper()
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		runs, err := loadRuns(tx, 0)
		if err != nil {
			return err
		}
		for _, r := range runs {
			if _, ok := runFind(tx.Bucket(bucketSeen).Bucket(runName(r.id)), appendSeenKey(nil, topic, id)); ok {
				found = true
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return found
}

// TestDedupWindow: a key is remembered for at least the window, and
// forgotten within 1.25 windows (by whole runs, which only merge within an
// epoch of a quarter window), with runs merging as often as they can.
func TestDedupWindow(t *testing.T) {
	const w, step = time.Hour, 5 * time.Minute
	clk := newFakeClock()
	s, path := openClocked(t, clk, &Options{DedupWindow: w, fanout: 2})
	for j := range 60 { // a key every 5 minutes for 5 hours
		mustApply(t, s, entries(uint64(j+1), ev("k", fmt.Sprint(j), baseTime)))
		for more := true; more; {
			var err error
			if more, err = s.Maintain(); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range s.runs {
			if _, ok := s.epochOf(r.runSpan); !ok {
				t.Fatalf("at %v: run %d spans epochs: %+v", time.Duration(j)*step, r.id, r.runSpan)
			}
		}
		for i := 0; i <= j; i++ {
			age := time.Duration(j-i) * step
			switch got := known(t, s, "k", fmt.Sprint(i)); {
			case age < w && !got:
				t.Fatalf("at %v: a key of age %v is forgotten", time.Duration(j)*step, age)
			case age > w*5/4 && got:
				t.Fatalf("at %v: a key of age %v is remembered", time.Duration(j)*step, age)
			}
		}
		clk.advance(step)
	}
	st := mustStats(t, s)
	if st.Forgotten == 0 || st.Keys != st.Unique-st.Forgotten || st.SeenRuns > 20 {
		t.Fatalf("stats %+v", st)
	}
	// A forgotten key is stored again, with a new seq; the old event stays.
	if res := mustApply(t, s, entries(61, ev("k", "0", baseTime))); res.Unique != 1 {
		t.Fatalf("resend of a forgotten key: %+v", res)
	}
	if got := len(feedAll(t, s, "k", 0, 100)); got != 61 {
		t.Fatalf("topic k holds %d events, want 61", got)
	}
	st = mustStats(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpenPath(t, path, &Options{DedupWindow: w})
	if st2 := mustStats(t, s); st2.Forgotten != st.Forgotten || st2.Keys != st.Keys || st2.Keys != st2.Unique-st2.Forgotten {
		t.Fatalf("reopened: %+v, was %+v", st2, st)
	}
}

// TestConsumerRunsIdleMaintenance: the consumer expires by age while the
// log is quiet.
func TestConsumerRunsIdleMaintenance(t *testing.T) {
	clk := newFakeClock()
	s, _ := openClocked(t, clk, &Options{Retention: event.Retention{Age: time.Minute}})
	log := newFakeLog()
	startConsumer(t, s, log, &ConsumerOptions{IdleInterval: time.Millisecond})
	log.appendEvents(topicEvents("a", 0, 5)...)
	poll.Until(t, 10*time.Second, "the events applied", func() bool { return s.Checkpoint() == 5 })
	clk.advance(2 * time.Minute)
	poll.Until(t, 10*time.Second, "the events expired", func() bool { return s.expired.Load() == 5 })
	if st := mustStats(t, s); st.Stored != 0 || st.FirstSeq != 6 {
		t.Fatalf("%+v", st)
	}
	if _, err := s.Verdicts(1, 1, topicEvents("a", 0, 1)); err != nil && !errors.Is(err, ErrVerdictUnknown) {
		t.Fatal(err)
	}
}

// TestExpiryRoundRobin: with more topics than a step looks at, steps go on
// where the last one stopped, round again, and every topic gets its turn.
func TestExpiryRoundRobin(t *testing.T) {
	const topics = 2*maxVisitPerStep + 50
	s, _ := mustOpen(t, &Options{Retention: event.Retention{Events: 1}})
	var evs []event.Event
	for i := range topics {
		evs = append(evs, topicEvents(fmt.Sprintf("t%04d", i), 0, 3)...)
	}
	mustApply(t, s, entries(1, evs...))
	if got := mustStats(t, s).Expired; got != 2*maxVisitPerStep {
		t.Fatalf("the chunk's step expired %d, want %d (one step's topics)", got, 2*maxVisitPerStep)
	}
	steps := 0
	for more := true; more; steps++ {
		var err error
		if more, err = s.Maintain(); err != nil {
			t.Fatal(err)
		}
	}
	if st := checkInvariants(t, s); st.Stored != topics || steps > 4 {
		t.Fatalf("after %d steps: %+v", steps, st)
	}
	// Nothing left: an idle step says so at once.
	if more, err := s.Maintain(); more || err != nil {
		t.Fatalf("idle step: %v %v", more, err)
	}
}
