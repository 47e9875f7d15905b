package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// drillFollower follows the feed through the whole drill, from seq 1,
// resuming from its own last seq across every kill -9 and restart, and
// keeps what it was delivered for the final check.
type drillFollower struct {
	f        *follower
	cancel   context.CancelFunc
	done     chan error // the follower's result, once it ended
	stopOnce sync.Once
	err      error

	mu  sync.Mutex
	fed []fedEvent // in delivery order, payloads dropped
}

// startFollower starts following; stop ends it.
func (d *drillRun) startFollower(ctx context.Context) {
	df := &drillFollower{done: make(chan error, 1)}
	df.f = &follower{client: newClient(1), base: d.base, mode: followPoll, wait: 2 * time.Second,
		deliver: func(e *fedEvent, _ time.Time) {
			c := *e
			c.Payload = nil
			df.mu.Lock()
			df.fed = append(df.fed, c)
			df.mu.Unlock()
		}}
	fctx, cancel := context.WithCancel(ctx)
	df.cancel = cancel
	go func() { df.done <- df.f.run(fctx) }()
	d.follow = df
}

// stop ends the follower and returns its error (nil when it was stopped).
// Calling it again returns the same.
func (df *drillFollower) stop() error {
	df.stopOnce.Do(func() {
		df.cancel()
		df.err = <-df.done
		df.f.client.CloseIdleConnections()
		if errors.Is(df.err, context.Canceled) {
			df.err = nil
		}
	})
	return df.err
}

// followerCase waits until the follower has reached the last seq, then
// checks that it saw every acknowledged event exactly once, in seq order
// (dense from 1), with offsets rising along it (arrival order, per topic
// too).
func (d *drillRun) followerCase(ctx context.Context) (string, error) {
	if err := d.ensureRunning(ctx); err != nil {
		return "", err
	}
	st, err := getStats(ctx, d.client, d.base)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(d.cfg.Timeout)
	for d.follow.delivered() < st.LastSeq && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	retries := d.follow.f.retries
	if err := d.follow.stop(); err != nil {
		return "", fmt.Errorf("follower: %w", err)
	}
	fed := d.follow.fed
	if uint64(len(fed)) != st.LastSeq {
		return "", fmt.Errorf("follower got %d events, last_seq is %d", len(fed), st.LastSeq)
	}
	if err := d.acks.Flush(); err != nil {
		return "", err
	}
	acked, err := readAckLogFile(d.ackPath)
	if err != nil {
		return "", err
	}
	seen := make(map[key]bool, len(fed))
	for i, e := range fed {
		if i > 0 && e.Offset <= fed[i-1].Offset {
			return "", fmt.Errorf("seq %d has offset %d after offset %d: not arrival order", e.Seq, e.Offset, fed[i-1].Offset)
		}
		k := key{Topic: e.Topic, EventID: e.EventID}
		if seen[k] {
			return "", fmt.Errorf("event %v delivered twice", k)
		}
		seen[k] = true
	}
	for k := range acked {
		if !seen[k] {
			var extra []string
			for _, e := range fed {
				if _, ok := acked[key{Topic: e.Topic, EventID: e.EventID}]; !ok && len(extra) < 5 {
					extra = append(extra, fmt.Sprintf("seq %d %s/%s offset %d", e.Seq, e.Topic, e.EventID, e.Offset))
				}
			}
			return "", fmt.Errorf("acknowledged event %v never delivered to the follower (%d delivered, %d acknowledged, last seq %d); "+
				"delivered but never acknowledged: %v; %s", k, len(fed), len(acked), st.LastSeq, extra, d.compareFeed(ctx, fed))
		}
	}
	return fmt.Sprintf("%d events delivered once each in seq order, every one of the %d acknowledged among them; "+
		"%d failed requests ridden over", len(fed), len(acked), retries), nil
}

// delivered returns the last seq the follower was delivered.
func (df *drillFollower) delivered() uint64 {
	df.mu.Lock()
	defer df.mu.Unlock()
	if len(df.fed) == 0 {
		return 0
	}
	return df.fed[len(df.fed)-1].Seq
}

// compareFeed reads the feed again and describes the first seq where it
// differs from what the follower was delivered.
func (d *drillRun) compareFeed(ctx context.Context, fed []fedEvent) string {
	var now []fedEvent
	f := &follower{client: d.client, base: d.base, mode: followPoll, deliver: func(e *fedEvent, _ time.Time) {
		now = append(now, *e)
	}}
	for range 1000 {
		before := len(now)
		if err := f.page(ctx); err != nil {
			return "feed now: " + err.Error()
		}
		if len(now) == before {
			break
		}
	}
	for i := range min(len(now), len(fed)) {
		if now[i].Topic != fed[i].Topic || now[i].EventID != fed[i].EventID || now[i].Offset != fed[i].Offset {
			return fmt.Sprintf("seq %d was %s/%s offset %d when delivered, is %s/%s offset %d now (feed now holds %d)",
				fed[i].Seq, fed[i].Topic, fed[i].EventID, fed[i].Offset, now[i].Topic, now[i].EventID, now[i].Offset, len(now))
		}
	}
	return fmt.Sprintf("the feed now holds %d events, the same as delivered for the first %d", len(now), min(len(now), len(fed)))
}
