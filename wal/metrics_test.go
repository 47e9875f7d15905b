package wal

import (
	"testing"

	"github.com/aggregator-dev/aggregator/internal/metrictest"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := openLog(t, t.TempDir(), &Options{Registerer: reg})
	mustAppend(t, l, []byte("abc"), []byte("defgh"))
	got := metrictest.Values(t, reg)
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
