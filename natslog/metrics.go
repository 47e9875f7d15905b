package natslog

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the log's Prometheus metrics; registered only when a
// Registerer is given, always safe to update.
type metrics struct {
	publishSeconds prometheus.Histogram
	publishedTotal prometheus.Counter
	publishErrors  prometheus.Counter
	read           prometheus.Counter
	gaps           prometheus.Counter
	purgedBelow    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregator_nats_publish_seconds",
			Help:    "Time from sending a batch (or a single message) to JetStream's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}),
		publishedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_nats_published_records_total",
			Help: "Records this node published and JetStream acknowledged.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_nats_publish_errors_total",
			Help: "Batches whose publish failed (nothing of them acknowledged).",
		}),
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_nats_read_records_total",
			Help: "Records the stream reader handed to the consumer's buffer.",
		}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_nats_gap_records_total",
			Help: "Sequences missing from the stream (deleted), handed to the consumer as empty records.",
		}),
		purgedBelow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aggregator_nats_purged_below",
			Help: "The sequence this node last purged the stream below (the smallest checkpoint of all nodes + 1).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.publishSeconds, m.publishedTotal, m.publishErrors, m.read, m.gaps, m.purgedBelow} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) published(records int, took time.Duration, err error) {
	if err != nil {
		m.publishErrors.Inc()
		return
	}
	m.publishSeconds.Observe(took.Seconds())
	m.publishedTotal.Add(float64(records))
}
