// Package metrictest reads Prometheus metrics back in the project's tests.
package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Values gathers g and returns the value of each gauge and counter by name,
// and the sample count and sum of each histogram as name_count and name_sum.
// Metrics with labels are not told apart: use it for unlabelled ones.
func Values(tb testing.TB, g prometheus.Gatherer) map[string]float64 {
	tb.Helper()
	families, err := g.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[f.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[f.GetName()] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[f.GetName()+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[f.GetName()+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}
