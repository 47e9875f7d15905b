package main

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/aggregator-dev/aggregator/api"
)

// lagWatch samples the consumer lag (GET /stats wal.lag) while a run is in
// progress, to show whether the consumer keeps up with the publishers.
type lagWatch struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu            sync.Mutex
	maxLag        uint64
	lastLag       uint64
	samples       int
	failedSamples int // GET /stats calls that failed
}

// startLagWatch polls base every interval until Stop.
func startLagWatch(c *http.Client, base string, interval time.Duration) *lagWatch {
	lw := &lagWatch{stop: make(chan struct{})}
	lw.wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-lw.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), max(interval, time.Second))
			s, err := getStats(ctx, c, base)
			cancel()
			lw.mu.Lock()
			if err != nil {
				lw.failedSamples++
			} else {
				lw.samples++
				lw.lastLag = s.WAL.Lag
				lw.maxLag = max(lw.maxLag, s.WAL.Lag)
			}
			lw.mu.Unlock()
		}
	})
	return lw
}

// Stop ends the sampling and waits for it; calling it twice is harmless.
func (lw *lagWatch) Stop() {
	select {
	case <-lw.stop:
	default:
		close(lw.stop)
	}
	lw.wg.Wait()
}

// lagProbe measures the consumer lag around a publish run: the counters
// before it, samples of the lag during it, and the drain to lag 0 after it.
type lagProbe struct {
	client *http.Client
	base   string
	before api.StatsReply // counters before the run
	watch  *lagWatch
}

// startLagProbe reads the counters of base and starts sampling its lag
// every interval.
func startLagProbe(ctx context.Context, c *http.Client, base string, interval time.Duration) (*lagProbe, error) {
	before, err := getStats(ctx, c, base)
	if err != nil {
		return nil, err
	}
	return &lagProbe{client: c, base: base, before: before, watch: startLagWatch(c, base, interval)}, nil
}

// Stop ends the sampling; calling it twice is harmless.
func (lp *lagProbe) Stop() { lp.watch.Stop() }

// drain stops the sampling, waits up to a minute for lag 0 and reports the
// samples, the drain time and the rate the consumer applied events at since
// runStart.
func (lp *lagProbe) drain(ctx context.Context, runStart time.Time) *lagReport {
	lp.Stop()
	r := lp.watch.report()
	r.DrainS = -1
	drainStart := time.Now()
	if after, err := waitLagZero(ctx, lp.client, lp.base, time.Minute); err == nil {
		r.DrainS = time.Since(drainStart).Seconds()
		applied := (after.UniqueProcessed + after.DuplicateDropped) - (lp.before.UniqueProcessed + lp.before.DuplicateDropped)
		r.Processed = float64(applied) / time.Since(runStart).Seconds()
	}
	return &r
}

// lagReport is the lag part of a publish summary.
type lagReport struct {
	Max       uint64  `json:"max"`
	Last      uint64  `json:"last"`
	Samples   int     `json:"samples"`
	Errors    int     `json:"errors"`
	DrainS    float64 `json:"drain_s"`         // from the end of publishing to lag 0 (-1: not reached)
	Processed float64 `json:"processed_per_s"` // unique+duplicates applied per second over the run and the drain
}

func (lw *lagWatch) report() lagReport {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lagReport{Max: lw.maxLag, Last: lw.lastLag, Samples: lw.samples, Errors: lw.failedSamples}
}
