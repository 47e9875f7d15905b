package main

import (
	"fmt"
	"slices"
	"sync"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
)

// topicGate bounds the number of topics (--max-topics): a request with an
// event of a new topic past the bound is refused with 429 and writes
// nothing. It knows the index's topics (read once, when the index is open)
// and the topics of every request it admitted, so a topic counts from its
// first acknowledged event, before the consumer applied it.
type topicGate struct {
	mu     sync.Mutex
	max    int
	known  map[string]struct{}
	loaded bool
}

// admit checks the topics of events, and counts the new ones as known.
func (g *topicGate) admit(events []event.Event, s *dedup.Store) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.loaded && s != nil {
		if err := g.load(s); err != nil {
			return fmt.Errorf("read topics: %w", err)
		}
	}
	var fresh []string
	for i := range events {
		t := events[i].Topic
		if _, ok := g.known[t]; ok || slices.Contains(fresh, t) {
			continue
		}
		fresh = append(fresh, t)
	}
	if len(fresh) > 0 && len(g.known)+len(fresh) > g.max {
		return fmt.Errorf("topic %q would be topic %d, above the bound of %d topics: %w",
			fresh[0], len(g.known)+1, g.max, event.ErrOverloaded)
	}
	for _, t := range fresh {
		g.known[t] = struct{}{}
	}
	return nil
}

// load adds the index's topics to the known ones.
func (g *topicGate) load(s *dedup.Store) error {
	after := ""
	for {
		page, more, err := s.Topics(after, event.MaxListLimit)
		if err != nil {
			return err
		}
		for _, t := range page {
			g.known[t.Topic] = struct{}{}
		}
		if !more || len(page) == 0 {
			g.loaded = true
			return nil
		}
		after = page[len(page)-1].Topic
	}
}
