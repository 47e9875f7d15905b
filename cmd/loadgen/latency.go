package main

import (
	"math"
	"slices"
	"time"
)

// latencySummary is the distribution of request latencies of one run.
type latencySummary struct {
	Count int
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	Max   time.Duration
}

// summarize sorts d in place and returns its percentiles. An empty d gives
// the zero summary.
func summarize(d []time.Duration) latencySummary {
	if len(d) == 0 {
		return latencySummary{}
	}
	slices.Sort(d)
	return latencySummary{
		Count: len(d),
		P50:   percentile(d, 50),
		P90:   percentile(d, 90),
		P99:   percentile(d, 99),
		Max:   d[len(d)-1],
	}
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value such that at least p percent of the
// values are less than or equal to it. It returns 0 for an empty slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// millis converts d to fractional milliseconds for reports.
func millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}
