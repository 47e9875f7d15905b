package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// summary is the final report of a publish run; --json prints it as one line.
type summary struct {
	RunID        string         `json:"run_id"`
	Concurrency  int            `json:"concurrency"`
	Batch        int            `json:"batch"`
	Format       string         `json:"format"`
	PayloadBytes int            `json:"payload_bytes"`
	DupFraction  float64        `json:"dup_fraction"`
	Topics       int            `json:"topics"`
	EventsPlan   int            `json:"events_planned"`
	Unique       int            `json:"unique_planned"`
	Duplicates   int            `json:"duplicates_planned"`
	EventsSent   int            `json:"events_sent"`
	EventsAcked  int            `json:"events_acked"`
	Requests     int            `json:"requests"`
	RequestsOK   int            `json:"requests_acked"`
	ElapsedS     float64        `json:"elapsed_s"`
	EventsPerS   float64        `json:"events_per_s"`
	RequestsPerS float64        `json:"requests_per_s"`
	LatencyMS    latencyMS      `json:"latency_ms"`
	Status       map[string]int `json:"status"`
	Lag          *lagReport     `json:"consumer_lag,omitempty"`
	ClientCPUS   float64        `json:"client_cpu_s"` // CPU the loadgen itself used during the run (it shares the machine)
}

type latencyMS struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func newSummary(g genConfig, conc int, p *plan, res *publishResult) summary {
	el := max(res.Elapsed.Seconds(), 1e-9)
	return summary{
		RunID: g.RunID, Concurrency: conc, Batch: g.Batch, Format: g.Format, PayloadBytes: g.PayloadSize,
		DupFraction: g.DupFraction, Topics: g.Topics,
		EventsPlan: p.events, Unique: p.unique, Duplicates: p.duplicates,
		EventsSent: res.EventsSent, EventsAcked: res.EventsAcked,
		Requests: res.Requests, RequestsOK: res.RequestsOK,
		ElapsedS:     res.Elapsed.Seconds(),
		EventsPerS:   float64(res.EventsAcked) / el,
		RequestsPerS: float64(res.RequestsOK) / el,
		LatencyMS: latencyMS{
			P50: millis(res.Latency.P50), P90: millis(res.Latency.P90),
			P99: millis(res.Latency.P99), Max: millis(res.Latency.Max),
		},
		Status: res.Status,
	}
}

// writeText writes the summary for a human reader: a few lines of text.
func (s summary) writeText(w io.Writer) {
	fmt.Fprintf(w, "run %s: %d/%d events acknowledged (%d requests of %d) in %.3fs\n",
		s.RunID, s.EventsAcked, s.EventsPlan, s.RequestsOK, s.Requests, s.ElapsedS)
	fmt.Fprintf(w, "throughput: %.0f events/s, %.0f requests/s\n", s.EventsPerS, s.RequestsPerS)
	fmt.Fprintf(w, "latency: p50 %.3fms p90 %.3fms p99 %.3fms max %.3fms\n",
		s.LatencyMS.P50, s.LatencyMS.P90, s.LatencyMS.P99, s.LatencyMS.Max)
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Status)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, s.Status[k]))
	}
	fmt.Fprintf(w, "status: %s\n", strings.Join(parts, " "))
	fmt.Fprintf(w, "loadgen cpu: %.2fs (%.0f%% of one core)\n", s.ClientCPUS, 100*s.ClientCPUS/max(s.ElapsedS, 1e-9))
	if l := s.Lag; l != nil {
		fmt.Fprintf(w, "consumer lag: max %d, last sample %d (%d samples, %d errors); lag 0 %.3fs after the run; %.0f events/s applied\n",
			l.Max, l.Last, l.Samples, l.Errors, l.DrainS, l.Processed)
	}
}
