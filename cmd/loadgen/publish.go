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
	client      *http.Client // used unless raw
	base        string       // http://127.0.0.1:port
	raw         bool         // one rawPoster connection per worker instead of client
	plan        *plan
	concurrency int
	acks        *ackLog // nil: acknowledgements are not recorded

	ackedEvents atomic.Int64 // events of acknowledged requests
	doneReqs    atomic.Int64 // requests finished, acknowledged or not, over all runs
	failedReqs  atomic.Int64 // requests not acknowledged, over all runs
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
	n := len(pb.plan.requests)
	if which != nil {
		n = len(which)
	}
	stopNew := ctx
	if maxDuration > 0 {
		var cancel context.CancelFunc
		stopNew, cancel = context.WithTimeout(ctx, maxDuration)
		defer cancel()
	}
	res := &publishResult{Status: make(map[string]int), Acked: make([]bool, len(pb.plan.requests))}
	type workerOut struct {
		lat      []time.Duration
		status   map[string]int
		done     int
		sent     int
		firstErr string
	}
	outs := make([]workerOut, max(pb.concurrency, 1))
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range outs {
		wg.Go(func() {
			out := &outs[w]
			post := pb.newPoster()
			defer post.close()
			out.status = make(map[string]int)
			out.lat = make([]time.Duration, 0, n/len(outs)+1)
			var lines []byte
			for {
				i := int(next.Add(1) - 1)
				if i >= n || stopNew.Err() != nil {
					return
				}
				if which != nil {
					i = which[i]
				}
				r := &pb.plan.requests[i]
				status, lat, err := pb.send(ctx, post, r)
				out.done++
				out.sent += len(r.ids)
				if status != 0 {
					out.lat = append(out.lat, lat)
					out.status[strconv.Itoa(status)]++
				} else {
					out.status[statusTransportError]++
				}
				if err != nil {
					if out.firstErr == "" {
						out.firstErr = err.Error()
					}
					pb.failedReqs.Add(1)
				} else {
					res.Acked[i] = true // each index is owned by one worker
					if pb.acks != nil {
						lines = appendAcks(lines[:0], pb.plan, r)
						pb.acks.write(lines)
					}
					pb.ackedEvents.Add(int64(len(r.ids)))
				}
				pb.doneReqs.Add(1)
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)

	var lat []time.Duration
	for _, o := range outs {
		lat = append(lat, o.lat...)
		for s, c := range o.status {
			res.Status[s] += c
		}
		res.EventsSent += o.sent
		res.Requests += o.done
		if res.FirstError == "" {
			res.FirstError = o.firstErr
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
	if pb.raw {
		return &rawPoster{addr: strings.TrimPrefix(pb.base, "http://"), contentType: pb.plan.contentType}
	}
	return &stdPoster{client: pb.client, url: pb.base + "/publish", contentType: pb.plan.contentType}
}

// errShortAck is returned for a 200 whose enqueued count is not the number
// of events sent; such a request is not counted as acknowledged.
var errShortAck = errors.New("loadgen: short acknowledgement")
