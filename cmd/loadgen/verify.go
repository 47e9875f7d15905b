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
	Acked         int           `json:"acked"`
	Listed        int           `json:"listed"`
	Pages         int           `json:"pages"`
	Missing       int           `json:"missing"`
	ListedTwice   int           `json:"listed_twice"`
	CountersAgree bool          `json:"counters_agree"`
	Problems      []string      `json:"problems,omitempty"`
	Stats         statsResponse `json:"-"`

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
	rep := &verifyReport{Acked: len(cfg.Acked), CountersAgree: true}
	problem := func(format string, a ...any) {
		rep.CountersAgree = false
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, a...))
	}
	var before statsResponse
	var err error
	if cfg.Wait > 0 {
		before, err = waitLagZero(ctx, c, cfg.Base, cfg.Wait)
		if err != nil {
			return nil, err
		}
	} else if before, err = getStats(ctx, c, cfg.Base); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	listed := make(map[key]uint32, before.UniqueProcessed)
	perTopic := make(map[string]uint64)
	// Bound the paging: every listed event costs at most one slot, and a
	// server that keeps returning cursors past that is itself an error.
	maxPages := int(before.UniqueProcessed)/cfg.PageSize + 1000
	cursor := ""
	seenCursor := map[string]bool{}
	for {
		if rep.Pages >= maxPages {
			return nil, fmt.Errorf("list events: more than %d pages for %d unique events", maxPages, before.UniqueProcessed)
		}
		q := url.Values{"limit": {strconv.Itoa(cfg.PageSize)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var page eventsPage
		if err := getJSON(ctx, c, cfg.Base+"/events?"+q.Encode(), &page); err != nil {
			return nil, fmt.Errorf("list events page %d: %w", rep.Pages+1, err)
		}
		rep.Pages++
		if len(page.Events) > cfg.PageSize {
			problem("page %d has %d events, limit was %d", rep.Pages, len(page.Events), cfg.PageSize)
		}
		for _, e := range page.Events {
			k := key{Topic: e.Topic, EventID: e.EventID}
			listed[k]++
			perTopic[e.Topic]++
			rep.Listed++
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			break
		}
		cursor = *page.NextCursor
		if seenCursor[cursor] {
			return nil, fmt.Errorf("list events: cursor %q returned twice", truncate(cursor, 40))
		}
		seenCursor[cursor] = true
	}

	for k := range cfg.Acked {
		if listed[k] == 0 {
			rep.missing = append(rep.missing, k)
		}
	}
	for k, n := range listed {
		if n > 1 {
			rep.twice = append(rep.twice, k)
		}
	}
	sortKeys(rep.missing)
	sortKeys(rep.twice)
	rep.Missing, rep.ListedTwice = len(rep.missing), len(rep.twice)

	after, err := getStats(ctx, c, cfg.Base)
	if err != nil {
		return nil, err
	}
	rep.Stats = after
	if after.UniqueProcessed != before.UniqueProcessed || after.Received != before.Received {
		problem("stats changed while listing: unique %d -> %d, received %d -> %d (is something still publishing?)",
			before.UniqueProcessed, after.UniqueProcessed, before.Received, after.Received)
	}
	checkCounters(&after, rep.Listed, perTopic, problem)
	return rep, nil
}

// checkCounters compares the counters of s with what was listed.
func checkCounters(s *statsResponse, listed int, perTopic map[string]uint64, problem func(string, ...any)) {
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
