package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Ways to follow the feed.
const (
	followPoll   = "poll"   // GET /feed?after=&wait= (long-poll)
	followSSE    = "sse"    // GET /feed as Server-Sent Events
	followCursor = "cursor" // a named cursor: /consumers/{name}/next, then ack
)

// fedEvent is what a follower keeps of one delivered event.
type fedEvent struct {
	Seq     uint64          `json:"seq"`
	Offset  uint64          `json:"offset"`
	Topic   string          `json:"topic"`
	EventID string          `json:"event_id"`
	Payload json.RawMessage `json:"payload"`
}

// follower reads the unique events from its own last seq on, whatever
// happens to the server: when a request fails (the server was killed, is
// restarting) it retries from the same seq. It checks as it goes that seqs
// only grow (and, following every topic, grow by one).
type follower struct {
	client *http.Client
	base   string
	mode   string
	topic  string
	cursor string        // name of the cursor in followCursor mode
	wait   time.Duration // long-poll wait
	limit  int           // events per page (0: 1000)
	after  uint64        // last seq delivered
	// deliver is called for each event, in order, with the time it arrived.
	deliver func(e *fedEvent, at time.Time)
	// retries counts the failed requests (server down) it rode over.
	retries int
}

// errOutOfOrder is a feed that broke seq order: a check failed.
var errOutOfOrder = errors.New("feed out of order")

// run follows until ctx ends; it returns ctx's error, or errOutOfOrder.
func (f *follower) run(ctx context.Context) error {
	if f.mode == followCursor {
		if err := f.putCursor(ctx); err != nil {
			return err
		}
	}
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		switch f.mode {
		case followSSE:
			err = f.stream(ctx)
		default:
			err = f.page(ctx)
		}
		if errors.Is(err, errOutOfOrder) {
			return err
		}
		if err != nil && ctx.Err() == nil {
			f.retries++
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 500*time.Millisecond)
			continue
		}
		backoff = 10 * time.Millisecond
	}
	return ctx.Err()
}

// accept checks an event's place in the feed and delivers it.
func (f *follower) accept(e *fedEvent, at time.Time) error {
	if e.Seq <= f.after || f.topic == "" && e.Seq != f.after+1 {
		return fmt.Errorf("%w: seq %d after %d", errOutOfOrder, e.Seq, f.after)
	}
	f.after = e.Seq
	if f.deliver != nil {
		f.deliver(e, at)
	}
	return nil
}

// page reads one feed page (long-poll) and delivers it.
func (f *follower) page(ctx context.Context) error {
	path := "/feed?" + f.query().Encode()
	if f.mode == followCursor {
		path = "/consumers/" + f.cursor + "/next?" + url.Values{"limit": {f.pageLimit()}, "wait": {f.wait.String()}}.Encode()
	}
	body, err := f.get(ctx, path, nil)
	if err != nil {
		return err
	}
	evs, err := decodeFeedPage(body)
	if err != nil {
		return err
	}
	at := time.Now()
	for i := range evs {
		if err := f.accept(&evs[i], at); err != nil {
			return err
		}
	}
	if f.mode == followCursor && len(evs) > 0 {
		// What was delivered is acknowledged even when the delivery ended
		// the run (and ctx with it).
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return f.ack(actx)
	}
	return nil
}

func (f *follower) query() url.Values {
	q := url.Values{"after": {strconv.FormatUint(f.after, 10)}, "limit": {f.pageLimit()}, "wait": {f.wait.String()}}
	if f.topic != "" {
		q.Set("topic", f.topic)
	}
	return q
}

func (f *follower) pageLimit() string {
	if f.limit <= 0 {
		return "1000"
	}
	return strconv.Itoa(f.limit)
}

// stream reads the feed as Server-Sent Events until the stream ends.
func (f *follower) stream(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+"/feed?"+f.query().Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatUint(f.after, 10))
	resp, err := f.streamClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stream: status %d", resp.StatusCode)
	}
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue // id, event, retry, comments, blank lines
		}
		var e fedEvent
		if err := decodeFedEvent(data, &e); err != nil {
			return fmt.Errorf("decode stream event: %w", err)
		}
		if err := f.accept(&e, time.Now()); err != nil {
			return err
		}
	}
}

// streamClient is the client without its overall timeout, which would cut
// a stream.
func (f *follower) streamClient() *http.Client {
	c := *f.client
	c.Timeout = 0
	return &c
}

func (f *follower) putCursor(ctx context.Context) error {
	body := []byte(`{"topic":` + strconv.Quote(f.topic) + `}`)
	for ctx.Err() == nil {
		if _, err := f.request(ctx, http.MethodPut, "/consumers/"+f.cursor, body); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // the server may be starting: bounded by ctx
	}
	return ctx.Err()
}

// ack acknowledges the last seq delivered.
func (f *follower) ack(ctx context.Context) error {
	_, err := f.request(ctx, http.MethodPost, "/consumers/"+f.cursor+"/ack", []byte(`{"seq":`+strconv.FormatUint(f.after, 10)+`}`))
	return err
}

func (f *follower) get(ctx context.Context, path string, body []byte) ([]byte, error) {
	return f.request(ctx, http.MethodGet, path, body)
}

// request sends one request and returns the body of a 2xx reply.
func (f *follower) request(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, f.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, truncate(strings.TrimSpace(string(out)), 200))
	}
	return out, nil
}
