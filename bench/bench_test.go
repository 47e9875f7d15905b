package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// publishCell is one workload of BenchmarkPublish.
type publishCell struct {
	name        string
	concurrency int
	batch       int
	format      string // array or ndjson
	path        string // /publish, or with ?wait=applied
	rate        int    // expected events/s, to size the run's pre-built bodies
	null        bool   // also run it against the null handler, for the ratio
}

// BenchmarkPublish measures publishing on the real binary: single events
// at 1, 16 and 64 publishers (each next to the null handler in the same run,
// with the ratio), batches of 100 as a JSON array at 1, 16 and 64
// publishers, as NDJSON, and with wait=applied.
func BenchmarkPublish(b *testing.B) {
	for _, c := range []publishCell{
		{name: "single/c=1", concurrency: 1, batch: 1, format: "array", path: "/publish", rate: 8000, null: true},
		{name: "single/c=16", concurrency: 16, batch: 1, format: "array", path: "/publish", rate: 40000, null: true},
		{name: "single/c=64", concurrency: 64, batch: 1, format: "array", path: "/publish", rate: 50000, null: true},
		{name: "batch=100/c=1", concurrency: 1, batch: 100, format: "array", path: "/publish", rate: 100000},
		{name: "batch=100/c=16", concurrency: 16, batch: 100, format: "array", path: "/publish", rate: 350000},
		{name: "batch=100/c=64", concurrency: 64, batch: 100, format: "array", path: "/publish", rate: 350000},
		{name: "ndjson=100/c=16", concurrency: 16, batch: 100, format: "ndjson", path: "/publish", rate: 350000},
		{name: "applied=100/c=16", concurrency: 16, batch: 100, format: "array", path: "/publish?wait=applied", rate: 250000},
	} {
		b.Run(c.name, func(b *testing.B) { runPublishCell(b, c) })
	}
}

// publishArgs are the loadgen publish flags of cell c against base.
func (c publishCell) publishArgs(base string) []string {
	secs := seconds()
	events := int(float64(c.rate)*secs) + c.batch*c.concurrency
	return []string{"publish", "--target", base, "--concurrency", strconv.Itoa(c.concurrency),
		"--batch", strconv.Itoa(c.batch), "--format", c.format, "--payload", "256", "--dup", "0.2",
		"--topics", "10", "--events", strconv.Itoa(events), "--duration", fmt.Sprintf("%gs", secs),
		"--path", c.path, "--seed", "1"}
}

func runPublishCell(b *testing.B, c publishCell) {
	ctx := context.Background()
	figures := map[string]float64{}
	if c.null {
		np := start(b, bins(b).nullserver)
		var ns publishSummary
		loadgen(b, ctx, &ns, c.publishArgs(np.base)...)
		np.stop()
		figures["null_req/s"] = ns.RequestsPerS
	}
	srv := startAggregator(b)
	cpu0 := srv.cpu(b)
	var s publishSummary
	args := c.publishArgs(srv.base)
	if c.batch > 1 {
		args = append(args, "--lag-interval", "100ms")
	}
	loadgen(b, ctx, &s, args...)
	cpu := srv.cpu(b) - cpu0
	figures["req/s"] = s.RequestsPerS
	figures["events/s"] = s.EventsPerS
	figures["p50_ms"] = s.LatencyMS.P50
	figures["p99_ms"] = s.LatencyMS.P99
	if n := s.RequestsPerS * s.ElapsedS; n > 0 {
		figures["server_cpu_us/req"] = float64(cpu.Microseconds()) / n
	}
	if s.Lag != nil {
		figures["drain_s"] = s.Lag.DrainS
	}
	if null := figures["null_req/s"]; null > 0 {
		figures["ratio_to_null"] = s.RequestsPerS / null
	}
	record(b, figures)
}

// BenchmarkFeed reads 1M stored events (BENCH_FEED_EVENTS) of 256-byte
// payloads through GET /feed, 10,000 a page, after a restart of the server.
func BenchmarkFeed(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("BENCH_FEED_EVENTS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	dir := b.TempDir()
	srv := start(b, bins(b).aggregator, "--data-dir", dir)
	var s publishSummary
	loadgen(b, ctx, &s, "publish", "--target", srv.base, "--concurrency", "16", "--batch", "100",
		"--payload", "256", "--dup", "0", "--topics", "10", "--events", strconv.Itoa(n), "--lag-interval", "200ms")
	srv.stop()
	srv = start(b, bins(b).aggregator, "--data-dir", dir) // a cold server process
	for _, mode := range []string{"poll", "sse"} {
		b.Run("mode="+mode, func(b *testing.B) {
			var c consumeSummary
			loadgen(b, ctx, &c, "consume", "--target", srv.base, "--mode", mode, "--from", "start",
				"--events", strconv.Itoa(n), "--limit", "10000", "--duration", "5m")
			record(b, map[string]float64{"events/s": c.PerSecond, "events": float64(c.Events)})
		})
	}
}

// BenchmarkFollowers publishes 100,000 events/s (16 × 100-event batches)
// with one SSE and one long-poll follower, and without them, and reports
// the publish-to-delivery latency and the publish throughput of both runs.
func BenchmarkFollowers(b *testing.B) {
	ctx := context.Background()
	secs := seconds()
	run := func(b *testing.B, followers bool) map[string]float64 {
		srv := startAggregator(b)
		figures := map[string]float64{}
		var wg sync.WaitGroup
		reports := map[string]*consumeSummary{}
		if followers {
			for _, mode := range []string{"sse", "poll"} {
				c := &consumeSummary{}
				reports[mode] = c
				wg.Add(1)
				go func() {
					defer wg.Done()
					loadgen(b, ctx, c, "consume", "--target", srv.base, "--mode", mode, "--from", "now",
						"--events", strconv.Itoa(int(100000*secs*0.8)), "--duration", fmt.Sprintf("%gs", secs+10))
				}()
			}
			time.Sleep(500 * time.Millisecond) // let the followers start their first read
		}
		var s publishSummary
		loadgen(b, ctx, &s, "publish", "--target", srv.base, "--concurrency", "16", "--batch", "100",
			"--payload", "256", "--dup", "0", "--topics", "10", "--rate", "100000", "--stamp",
			"--events", strconv.Itoa(int(100000*secs)), "--duration", fmt.Sprintf("%gs", secs))
		wg.Wait()
		figures["publish_events/s"] = s.EventsPerS
		for mode, c := range reports {
			if c.Latency != nil {
				figures[mode+"_p50_ms"] = c.Latency.P50
				figures[mode+"_p99_ms"] = c.Latency.P99
			}
			figures[mode+"_events"] = float64(c.Events)
		}
		return figures
	}
	b.Run("followers=0", func(b *testing.B) { record(b, run(b, false)) })
	b.Run("followers=2", func(b *testing.B) { record(b, run(b, true)) })
}

// BenchmarkIndexGrowth publishes rounds of 1M events (16 × 100-event
// batches, 20% duplicates) into one server, BENCH_GROWTH_ROUNDS rounds
// (default 10: 8M stored events), and reports each round's rate and the
// server's anonymous resident memory once the consumer caught up.
func BenchmarkIndexGrowth(b *testing.B) {
	rounds := 10
	if v, err := strconv.Atoi(os.Getenv("BENCH_GROWTH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	ctx := context.Background()
	srv := startAggregator(b)
	for r := range rounds {
		b.Run(fmt.Sprintf("round=%02d", r+1), func(b *testing.B) {
			var s publishSummary
			loadgen(b, ctx, &s, "publish", "--target", srv.base, "--concurrency", "16", "--batch", "100",
				"--payload", "256", "--dup", "0.2", "--topics", "10", "--events", "1000000",
				"--run-id", "round"+strconv.Itoa(r), "--lag-interval", "200ms", "--seed", strconv.Itoa(r+1))
			var st struct {
				Unique uint64 `json:"unique_processed"`
			}
			statsOf(b, srv.base, &st)
			figures := map[string]float64{"events/s": s.EventsPerS, "stored_events": float64(st.Unique),
				"rss_anon_MiB": float64(srv.rssAnon(b)) / (1 << 20), "drain_s": drain(s)}
			if s.Lag != nil {
				figures["applied_events/s"] = s.Lag.Processed
			}
			record(b, figures)
		})
	}
}

func drain(s publishSummary) float64 {
	if s.Lag == nil {
		return -1
	}
	return s.Lag.DrainS
}

// statsOf decodes GET /stats into out.
func statsOf(tb testing.TB, base string, out any) {
	tb.Helper()
	resp, err := http.Get(base + "/stats")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		tb.Fatal(err)
	}
}
