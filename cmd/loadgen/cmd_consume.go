package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"
)

// consumeCommand follows the feed (long-poll, SSE or a named cursor) and
// reports the events delivered per second and the publish-to-delivery
// latency, from the send time that `loadgen publish --stamp` puts in each
// payload.
type consumeCommand struct {
	stdout, stderr io.Writer

	target   string
	mode     string
	topic    string
	cursor   string
	from     string // "now" or "start"
	events   int
	duration time.Duration
	wait     time.Duration
	limit    int
	jsonOut  bool
}

// consumeReport is what consume prints.
type consumeReport struct {
	Mode      string     `json:"mode"`
	Events    int        `json:"events"`
	Stamped   int        `json:"stamped"` // events with a send time
	ElapsedS  float64    `json:"elapsed_s"`
	PerSecond float64    `json:"events_per_s"`
	Latency   *latencyMS `json:"latency_ms,omitempty"` // publish to delivery
	LastSeq   uint64     `json:"last_seq"`
	Retries   int        `json:"retries"`
}

// Run follows the feed the flags in args describe until it has the events,
// the duration passed, or ctx ends.
func (c *consumeCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen consume", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.target, "target", defaultTarget(), "base URL of the service (127.0.0.1 only)")
	fs.StringVar(&c.mode, "mode", followPoll, "poll (GET /feed long-poll), sse (Server-Sent Events) or cursor (a named cursor)")
	fs.StringVar(&c.topic, "topic", "", "follow one topic only")
	fs.StringVar(&c.cursor, "cursor", "loadgen", "cursor name (mode cursor)")
	fs.StringVar(&c.from, "from", "now", "now: the events applied from now on; start: from seq 1")
	fs.IntVar(&c.events, "events", 0, "stop after this many events (0: at -duration)")
	fs.DurationVar(&c.duration, "duration", time.Minute, "stop after this long")
	fs.DurationVar(&c.wait, "wait", 5*time.Second, "long-poll wait of each request (modes poll and cursor)")
	fs.IntVar(&c.limit, "limit", 1000, "events per page (modes poll and cursor), 1 to 10000")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as one JSON line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base, err := checkTarget(c.target)
	if err != nil {
		return &usageError{err: err}
	}
	if c.mode != followPoll && c.mode != followSSE && c.mode != followCursor {
		return usagef("mode must be poll, sse or cursor")
	}
	if c.from != "now" && c.from != "start" || c.duration <= 0 || c.events < 0 {
		return usagef("from must be now or start, duration positive, events not negative")
	}
	client := newClient(2)
	defer client.CloseIdleConnections()
	f := &follower{client: client, base: base, mode: c.mode, topic: c.topic, cursor: c.cursor, wait: c.wait, limit: c.limit}
	if c.from == "now" && c.mode != followCursor {
		st, err := getStats(ctx, client, base)
		if err != nil {
			return err
		}
		f.after = st.LastSeq
	}
	rep, err := c.follow(ctx, f)
	if err != nil {
		return err
	}
	if c.jsonOut {
		writeJSONLine(c.stdout, rep)
	} else {
		fmt.Fprintf(c.stdout, "consume (%s): %d events in %.2fs = %.0f events/s, last seq %d, %d retries\n",
			rep.Mode, rep.Events, rep.ElapsedS, rep.PerSecond, rep.LastSeq, rep.Retries)
		if rep.Latency != nil {
			fmt.Fprintf(c.stdout, "publish to delivery (%d stamped events): p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n",
				rep.Stamped, rep.Latency.P50, rep.Latency.P90, rep.Latency.P99, rep.Latency.Max)
		}
	}
	return nil
}

// follow runs f until the event count or the duration is reached.
func (c *consumeCommand) follow(ctx context.Context, f *follower) (consumeReport, error) {
	ctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	var (
		mu      sync.Mutex
		n       int
		lat     []time.Duration
		started time.Time
	)
	f.deliver = func(e *fedEvent, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if n == 0 {
			started = at
		}
		n++
		if sent, ok := sentAt(e.Payload); ok {
			lat = append(lat, at.Sub(sent))
		}
		if c.events > 0 && n >= c.events {
			cancel()
		}
	}
	if err := f.run(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return consumeReport{}, err
	}
	mu.Lock()
	defer mu.Unlock()
	rep := consumeReport{Mode: c.mode, Events: n, Stamped: len(lat), LastSeq: f.after, Retries: f.retries}
	if n > 0 {
		rep.ElapsedS = time.Since(started).Seconds()
		if rep.ElapsedS > 0 {
			rep.PerSecond = float64(n) / rep.ElapsedS
		}
	}
	if len(lat) > 0 {
		l := summarize(lat)
		rep.Latency = &latencyMS{P50: millis(l.P50), P90: millis(l.P90), P99: millis(l.P99), Max: millis(l.Max)}
	}
	return rep, nil
}
