package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// statusTransportError counts requests that got no HTTP response.
const statusTransportError = "error"

// publisher sends the requests of a plan with a fixed number of concurrent
// workers. Its counters may be read while run is in progress.
type publisher struct {
	client *http.Client // used unless raw
	base   string       // http://127.0.0.1:port
	path   string       // request target: /publish (the default when "") with its query
	// rate, when positive, paces the run at that many events per second,
	// open loop: request i is sent at start + i × (events per request /
	// rate), whatever the replies.
	rate        float64
	raw         bool // one rawPoster connection per worker instead of client
	plan        *plan
	concurrency int
	acks        *ackLog // nil: acknowledgements are not recorded

	ackedEvents  atomic.Int64 // events of acknowledged requests
	finishedReqs atomic.Int64 // requests finished, acknowledged or not, over all runs
	failedReqs   atomic.Int64 // requests not acknowledged, over all runs
}

// publishResult is the outcome of one publisher run.
type publishResult struct {
	Elapsed     time.Duration
	Requests    int // requests finished (acknowledged or not)
	RequestsOK  int // requests acknowledged
	EventsSent  int // events of the finished requests
	EventsAcked int // events of the acknowledged requests
	Status      map[string]int
	Latency     latencySummary // of requests that got an HTTP response
	Acked       []bool         // per plan request: acknowledged in this run
	FirstError  string
}

// publishResponse is the body of a 200 from POST /publish.
type publishResponse struct {
	Enqueued    int    `json:"enqueued"`
	FirstOffset uint64 `json:"first_offset"`
	LastOffset  uint64 `json:"last_offset"`
}

// run sends the requests whose indices are in which (nil: all, in order)
// and returns when all are done, ctx ends, or maxDuration (0: no cap) has
// passed since the start; in-flight requests finish in the last case.
func (pb *publisher) run(ctx context.Context, which []int, maxDuration time.Duration) *publishResult {
	stopNew := ctx
	if maxDuration > 0 {
		var cancel context.CancelFunc
		stopNew, cancel = context.WithTimeout(ctx, maxDuration)
		defer cancel()
	}
	queue := &requestQueue{which: which, size: len(pb.plan.requests), stopNew: stopNew, start: time.Now()}
	if which != nil {
		queue.size = len(which)
	}
	if pb.rate > 0 && len(pb.plan.requests) > 0 {
		queue.interval = time.Duration(float64(pb.plan.events) / float64(len(pb.plan.requests)) / pb.rate * float64(time.Second))
	}
	acked := make([]bool, len(pb.plan.requests))
	tallies := make([]workerTally, max(pb.concurrency, 1))
	perWorker := queue.size/len(tallies) + 1
	var wg sync.WaitGroup
	start := time.Now()
	for w := range tallies {
		wg.Go(func() { pb.work(ctx, queue, &tallies[w], perWorker, acked) })
	}
	wg.Wait()
	return pb.result(time.Since(start), tallies, acked)
}

// requestQueue hands the requests of one run to its workers.
type requestQueue struct {
	which    []int // plan indices of the requests; nil: all, in order
	size     int   // requests in the run
	next     atomic.Int64
	stopNew  context.Context // no request is handed out once it ends
	interval time.Duration   // > 0: request i is handed out no sooner than start + i*interval
	start    time.Time
}

// take returns the plan index of the next request, or false when every
// request has been handed out or stopNew has ended.
func (q *requestQueue) take() (int, bool) {
	i := int(q.next.Add(1) - 1)
	if i >= q.size || q.stopNew.Err() != nil {
		return 0, false
	}
	if q.interval > 0 {
		if wait := time.Until(q.start.Add(time.Duration(i) * q.interval)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-q.stopNew.Done():
				t.Stop()
				return 0, false
			}
		}
	}
	if q.which != nil {
		i = q.which[i]
	}
	return i, true
}

// workerTally is what one worker of a run counted; result merges them.
type workerTally struct {
	latencies []time.Duration // of requests that got an HTTP response
	status    map[string]int
	requests  int // requests finished
	events    int // events of the finished requests
	firstErr  string
}

// work is one worker of a run: it sends the requests it takes from queue
// over a poster of its own until the queue is done, counts them in tally
// (sized for about perWorker requests), and marks in acked the requests
// that were acknowledged (each index is taken by one worker only).
func (pb *publisher) work(ctx context.Context, queue *requestQueue, tally *workerTally, perWorker int, acked []bool) {
	post := pb.newPoster()
	defer post.closeConn()
	tally.status = make(map[string]int)
	tally.latencies = make([]time.Duration, 0, perWorker)
	var lines []byte
	for {
		i, ok := queue.take()
		if !ok {
			return
		}
		r := &pb.plan.requests[i]
		status, lat, err := pb.send(ctx, post, r)
		tally.count(status, lat, len(r.ids), err)
		if err != nil {
			pb.failedReqs.Add(1)
		} else {
			acked[i] = true
			if pb.acks != nil {
				lines = appendAcks(lines[:0], pb.plan, r)
				pb.acks.write(lines)
			}
			pb.ackedEvents.Add(int64(len(r.ids)))
		}
		pb.finishedReqs.Add(1)
	}
}

// count adds one finished request of events events: its HTTP status (0:
// none), its latency and its error.
func (t *workerTally) count(status int, lat time.Duration, events int, err error) {
	t.requests++
	t.events += events
	if status != 0 {
		t.latencies = append(t.latencies, lat)
		t.status[strconv.Itoa(status)]++
	} else {
		t.status[statusTransportError]++
	}
	if err != nil && t.firstErr == "" {
		t.firstErr = err.Error()
	}
}

// result merges the tallies of the workers of a run that took elapsed and
// acknowledged the requests acked marks.
func (pb *publisher) result(elapsed time.Duration, tallies []workerTally, acked []bool) *publishResult {
	res := &publishResult{Elapsed: elapsed, Status: make(map[string]int), Acked: acked}
	var lat []time.Duration
	for _, t := range tallies {
		lat = append(lat, t.latencies...)
		for s, c := range t.status {
			res.Status[s] += c
		}
		res.EventsSent += t.events
		res.Requests += t.requests
		if res.FirstError == "" {
			res.FirstError = t.firstErr
		}
	}
	res.Latency = summarize(lat)
	for i, ok := range res.Acked {
		if ok {
			res.RequestsOK++
			res.EventsAcked += len(pb.plan.requests[i].ids)
		}
	}
	return res
}

// send POSTs one pre-built body. It returns the HTTP status (0 when there was
// no response), the latency until the response was read, and an error unless
// the request was acknowledged: status 200 with every event enqueued.
func (pb *publisher) send(ctx context.Context, p poster, r *request) (int, time.Duration, error) {
	start := time.Now()
	r.stamp(start)
	status, body, err := p.post(ctx, r.body)
	lat := time.Since(start)
	if err != nil {
		return status, lat, err
	}
	if status != http.StatusOK {
		return status, lat, fmt.Errorf("status %d: %s", status, truncate(string(bytes.TrimSpace(body)), 200))
	}
	var pr publishResponse
	if err := json.Unmarshal(body, &pr); err != nil {
		return status, lat, fmt.Errorf("decode response: %w", err)
	}
	if pr.Enqueued != len(r.ids) {
		return status, lat, fmt.Errorf("%w: enqueued %d of %d", errShortAck, pr.Enqueued, len(r.ids))
	}
	return status, lat, nil
}

// newPoster returns the poster of one worker.
func (pb *publisher) newPoster() poster {
	path := pb.path
	if path == "" {
		path = "/publish"
	}
	if pb.raw {
		return &rawPoster{addr: strings.TrimPrefix(pb.base, "http://"), path: path, contentType: pb.plan.contentType}
	}
	return &stdPoster{client: pb.client, url: pb.base + path, contentType: pb.plan.contentType}
}

// errShortAck is returned for a 200 whose enqueued count is not the number
// of events sent; such a request is not counted as acknowledged.
var errShortAck = errors.New("loadgen: short acknowledgement")
