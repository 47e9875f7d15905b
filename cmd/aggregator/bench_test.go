package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// BenchmarkServerPublish measures POST /publish end to end on the real wiring
// (HTTP, validation, group commit with fsync, consumer in the background),
// with the client in the same process. events/s is the figure to compare with
// the targets (150k events/s in batches of 100, 20k single-event requests/s).
func BenchmarkServerPublish(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			ts := startServer(b, b.TempDir(), nil)
			tr := &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			var seq atomic.Int64
			b.SetParallelism(16) // 16 × GOMAXPROCS publishers
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var body bytes.Buffer
				for pb.Next() {
					body.Reset()
					base := seq.Add(int64(n)) - int64(n)
					if n > 1 {
						body.WriteByte('[')
					}
					for i := range n {
						if i > 0 {
							body.WriteByte(',')
						}
						fmt.Fprintf(&body, `{"topic":"bench-%d","event_id":"e-%d","timestamp":"2025-10-20T12:00:00.123Z","source":"bench",`+
							`"payload":{"order":%d,"amount":12.5,"items":["a","b"],"note":"%s"}}`, (base+int64(i))%8, base+int64(i), i, strings.Repeat("x", 150))
					}
					if n > 1 {
						body.WriteByte(']')
					}
					resp, err := hc.Post(ts.base+"/publish", "application/json", bytes.NewReader(body.Bytes()))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "events/s")
			ts.drain(b.Elapsed() + 60_000_000_000)
		})
	}
}
