package wal

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// gathered returns the value of each gauge and counter and the sample count
// and sum (as name_count, name_sum) of each histogram on reg.
func gathered(tb testing.TB, reg *prometheus.Registry) map[string]float64 {
	tb.Helper()
	families, err := reg.Gather()
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

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := openLog(t, t.TempDir(), &Options{Registerer: reg})
	mustAppend(t, l, []byte("abc"), []byte("defgh"))
	got := gathered(t, reg)
	for name, want := range map[string]float64{
		"aggregator_wal_fsync_duration_seconds_count": 1,
		"aggregator_wal_records_per_commit_sum":       2,
		"aggregator_wal_written_bytes_total":          8,
		"aggregator_wal_last_offset":                  2,
		"aggregator_wal_segments":                     1,
		"aggregator_wal_bytes":                        float64(l.Stats().Bytes),
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	// A second log on the same registry is refused, not a panic.
	if l2, err := Open(t.TempDir(), &Options{Registerer: reg}); err == nil {
		l2.Close()
		t.Error("second Open on the same registry: no error")
	}
}
