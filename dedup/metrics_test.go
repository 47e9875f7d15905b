package dedup

import (
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"

	"github.com/aggregator-dev/aggregator/internal/metrictest"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, _ := mustOpen(t, &Options{Registerer: reg})
	log := newFakeLog()
	log.appendEvents(ev("a", "1", baseTime), ev("b", "1", baseTime), ev("a", "1", baseTime))
	startConsumer(t, s, log, &ConsumerOptions{ChunkDelay: -1, Registerer: reg})
	poll.Until(t, 20*time.Second, "the consumer", func() bool { return s.Checkpoint() == 3 })
	want := map[string]float64{
		"aggregator_events_unique_total":                   2,
		"aggregator_events_duplicate_total":                1,
		"aggregator_consumer_lag":                          0,
		"aggregator_consumer_checkpoint":                   3,
		"aggregator_dedup_keys":                            2,
		"aggregator_topics":                                2,
		"aggregator_events_expired":                        0,
		"aggregator_consumer_entries_per_apply_count":      1,
		"aggregator_consumer_apply_duration_seconds_count": 1,
	}
	// The counters move just after the commit that the checkpoint shows.
	poll.Until(t, 20*time.Second, "the metrics", func() bool {
		got := metrictest.Values(t, reg)
		for name, v := range want {
			if got[name] != v {
				return false
			}
		}
		return true
	})
}
