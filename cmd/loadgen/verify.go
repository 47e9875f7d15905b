package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/aggregator-dev/aggregator/api"
)

// verifyConfig says what to check.
type verifyConfig struct {
	Base     string           // http://127.0.0.1:port
	Acked    map[key]struct{} // acknowledged events (from an acklog)
	PageSize int              // events per GET /events page
	Wait     time.Duration    // how long to wait for lag 0 first (0: do not wait)
	Timeout  time.Duration    // bound on the whole listing (0: 5 minutes)
}

// verifyReport is what verify found.
type verifyReport struct {
	Acked         int            `json:"acked"`
	Listed        int            `json:"listed"`
	Pages         int            `json:"pages"`
	Missing       int            `json:"missing"`
	ListedTwice   int            `json:"listed_twice"`
	CountersAgree bool           `json:"counters_agree"`
	Problems      []string       `json:"problems,omitempty"`
	Stats         api.StatsReply `json:"-"`

	missing []key
	twice   []key
}

// OK reports whether no acknowledged event is missing, none is listed twice
// and the counters agree.
func (r *verifyReport) OK() bool {
	return r.Missing == 0 && r.ListedTwice == 0 && r.CountersAgree
}

// String is the human report.
func (r *verifyReport) String() string {
	s := fmt.Sprintf("acknowledged %d, listed %d (%d pages), missing %d, listed twice %d, counters ",
		r.Acked, r.Listed, r.Pages, r.Missing, r.ListedTwice)
	if r.CountersAgree {
		s += fmt.Sprintf("agree (received %d = unique %d + duplicates %d, %d topics)",
			r.Stats.Received, r.Stats.UniqueProcessed, r.Stats.DuplicateDropped, len(r.Stats.TopicCounts))
	} else {
		s += "DISAGREE"
	}
	if len(r.missing) > 0 {
		s += "\n  missing: " + sampleKeys(r.missing, 10)
	}
	if len(r.twice) > 0 {
		s += "\n  listed twice: " + sampleKeys(r.twice, 10)
	}
	for _, p := range r.Problems {
		s += "\n  " + p
	}
	return s
}

// verify lists every event through GET /events and compares it with the
// acknowledged set and with GET /stats. An error means the check could not
// be made (server unreachable, bad response); findings are in the report.
func verify(ctx context.Context, c *http.Client, cfg verifyConfig) (*verifyReport, error) {
	if cfg.PageSize <= 0 {
		cfg.PageSize = 1000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	before, err := statsBeforeListing(ctx, c, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	rep := &verifyReport{Acked: len(cfg.Acked), CountersAgree: true}
	listed, err := rep.listEvents(ctx, c, cfg, before.UniqueProcessed)
	if err != nil {
		return nil, err
	}
	rep.compare(cfg.Acked, listed.times)
	after, err := getStats(ctx, c, cfg.Base)
	if err != nil {
		return nil, err
	}
	rep.Stats = after
	if after.UniqueProcessed != before.UniqueProcessed || after.Received != before.Received {
		rep.problem("stats changed while listing: unique %d -> %d, received %d -> %d (is something still publishing?)",
			before.UniqueProcessed, after.UniqueProcessed, before.Received, after.Received)
	}
	checkCounters(&after, rep.Listed, listed.perTopic, rep.problem)
	return rep, nil
}

// statsBeforeListing returns the counters the listing starts from, once
// the consumer has caught up if cfg.Wait asks for it.
func statsBeforeListing(ctx context.Context, c *http.Client, cfg verifyConfig) (api.StatsReply, error) {
	if cfg.Wait > 0 {
		return waitLagZero(ctx, c, cfg.Base, cfg.Wait)
	}
	return getStats(ctx, c, cfg.Base)
}

// listing is what GET /events returned over all pages.
type listing struct {
	times    map[key]uint32    // how often each event was listed
	perTopic map[string]uint64 // events listed per topic, repeats included
}

// listEvents pages through GET /events, cfg.PageSize events a page, and
// counts the pages and the events listed in r; a page over the limit is a
// problem of r. unique, the unique_processed count before the listing,
// bounds the pages: every listed event costs at most one slot, and a server
// that keeps returning cursors past that is itself an error.
func (r *verifyReport) listEvents(ctx context.Context, c *http.Client, cfg verifyConfig, unique uint64) (listing, error) {
	listed := listing{times: make(map[key]uint32, unique), perTopic: make(map[string]uint64)}
	maxPages := int(unique)/cfg.PageSize + 1000
	cursor := ""
	seenCursor := map[string]bool{}
	for {
		if r.Pages >= maxPages {
			return listed, fmt.Errorf("list events: more than %d pages for %d unique events", maxPages, unique)
		}
		page, err := getEventsPage(ctx, c, cfg.Base, cfg.PageSize, cursor)
		if err != nil {
			return listed, fmt.Errorf("list events page %d: %w", r.Pages+1, err)
		}
		r.Pages++
		if len(page.Events) > cfg.PageSize {
			r.problem("page %d has %d events, limit was %d", r.Pages, len(page.Events), cfg.PageSize)
		}
		for _, e := range page.Events {
			listed.times[key{Topic: e.Topic, EventID: e.EventID}]++
			listed.perTopic[e.Topic]++
			r.Listed++
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			return listed, nil
		}
		cursor = *page.NextCursor
		if seenCursor[cursor] {
			return listed, fmt.Errorf("list events: cursor %q returned twice", truncate(cursor, 40))
		}
		seenCursor[cursor] = true
	}
}

// getEventsPage fetches the page of GET /events at cursor ("": the first).
func getEventsPage(ctx context.Context, c *http.Client, base string, limit int, cursor string) (eventsPage, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	var page eventsPage
	err := getJSON(ctx, c, base+"/events?"+q.Encode(), &page)
	return page, err
}

// compare records the acknowledged events that were not listed and the
// events listed more than once, each sorted.
func (r *verifyReport) compare(acked map[key]struct{}, times map[key]uint32) {
	for k := range acked {
		if times[k] == 0 {
			r.missing = append(r.missing, k)
		}
	}
	for k, n := range times {
		if n > 1 {
			r.twice = append(r.twice, k)
		}
	}
	sortKeys(r.missing)
	sortKeys(r.twice)
	r.Missing, r.ListedTwice = len(r.missing), len(r.twice)
}

// problem records a finding that means the counters do not agree.
func (r *verifyReport) problem(format string, a ...any) {
	r.CountersAgree = false
	r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
}

// checkCounters compares the counters of s with what was listed.
func checkCounters(s *api.StatsReply, listed int, perTopic map[string]uint64, problem func(string, ...any)) {
	if s.UniqueProcessed != uint64(listed) {
		problem("unique_processed %d but %d events listed", s.UniqueProcessed, listed)
	}
	if s.WAL.Lag == 0 {
		if s.Received != s.UniqueProcessed+s.DuplicateDropped {
			problem("received %d != unique_processed %d + duplicate_dropped %d at lag 0",
				s.Received, s.UniqueProcessed, s.DuplicateDropped)
		}
		if s.WAL.Checkpoint != s.WAL.LastOffset {
			problem("lag 0 but checkpoint %d != last_offset %d", s.WAL.Checkpoint, s.WAL.LastOffset)
		}
	} else {
		problem("consumer lag %d: counters cannot be compared yet", s.WAL.Lag)
	}
	var sum uint64
	for t, n := range s.TopicCounts {
		sum += n
		if perTopic[t] != n {
			problem("topic %q: topic_counts %d but %d listed", t, n, perTopic[t])
		}
	}
	for t, n := range perTopic {
		if _, ok := s.TopicCounts[t]; !ok {
			problem("topic %q: %d listed but absent from topic_counts", t, n)
		}
	}
	if sum != s.UniqueProcessed {
		problem("sum of topic_counts %d != unique_processed %d", sum, s.UniqueProcessed)
	}
	names := slices.Sorted(maps.Keys(perTopic))
	if !slices.Equal(names, s.Topics) && !(len(names) == 0 && len(s.Topics) == 0) {
		problem("topics %v, want the sorted listed topics %v", truncate(fmt.Sprint(s.Topics), 200), truncate(fmt.Sprint(names), 200))
	}
}

func sortKeys(ks []key) {
	slices.SortFunc(ks, func(a, b key) int {
		if a.Topic != b.Topic {
			if a.Topic < b.Topic {
				return -1
			}
			return 1
		}
		if a.EventID < b.EventID {
			return -1
		}
		if a.EventID > b.EventID {
			return 1
		}
		return 0
	})
}
