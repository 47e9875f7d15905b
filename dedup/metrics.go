package dedup

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// consumerMetrics are the consumer's Prometheus metrics, registered on
// ConsumerOptions.Registerer when one is given.
type consumerMetrics struct {
	apply      prometheus.Histogram
	perApply   prometheus.Histogram
	unique     prometheus.Counter
	duplicates prometheus.Counter
}

func newConsumerMetrics(reg prometheus.Registerer, s *Store, src Source) (*consumerMetrics, error) {
	m := &consumerMetrics{
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregator_consumer_apply_duration_seconds",
			Help:    "Duration of each consumer chunk applied to the index (one transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		perApply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregator_consumer_entries_per_apply",
			Help:    "Events in each consumer chunk.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		unique: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_unique_total",
			Help: "Events the consumer stored as unique.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_duplicate_total",
			Help: "Events the consumer dropped as duplicates.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "aggregator_consumer_lag",
		Help: "Events in the log that the consumer has not applied yet.",
	}, func() float64 {
		last, cp := src.LastOffset(), s.Checkpoint()
		if last < cp {
			return 0
		}
		return float64(last - cp)
	})
	for _, c := range []prometheus.Collector{m.apply, m.perApply, m.unique, m.duplicates, lag} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// applied records one committed chunk.
func (m *consumerMetrics) applied(entries, unique, duplicates int, took time.Duration) {
	m.apply.Observe(took.Seconds())
	m.perApply.Observe(float64(entries))
	m.unique.Add(float64(unique))
	m.duplicates.Add(float64(duplicates))
}
