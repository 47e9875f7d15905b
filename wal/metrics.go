package wal

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the log's Prometheus metrics. They are registered on
// Options.Registerer when one is given; without one they are kept but never
// exported.
type metrics struct {
	fsync     prometheus.Histogram
	perCommit prometheus.Histogram
	written   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, l *Log) (*metrics, error) {
	m := &metrics{
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregator_wal_fsync_duration_seconds",
			Help:    "Duration of the fsync of each group commit.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		perCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregator_wal_records_per_commit",
			Help:    "Events made durable by each group commit (one fsync).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_wal_written_bytes_total",
			Help: "Record bytes appended to the log.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	for _, c := range []prometheus.Collector{m.fsync, m.perCommit, m.written,
		gauge("aggregator_wal_bytes", "Bytes of the log's segment files.",
			func() float64 { return float64(l.Stats().Bytes) }),
		gauge("aggregator_wal_segments", "Segment files of the log.",
			func() float64 { return float64(l.Stats().Segments) }),
		gauge("aggregator_wal_last_offset", "Offset of the last acknowledged event.",
			func() float64 { return float64(l.LastOffset()) }),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// commit records one group commit: the records and bytes it made durable and
// how long its fsync took.
func (m *metrics) commit(records, bytes int, fsync time.Duration) {
	m.fsync.Observe(fsync.Seconds())
	m.perCommit.Observe(float64(records))
	m.written.Add(float64(bytes))
}
