package api

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the Prometheus metrics of the service, on a registry of their
// own (never the global default one). OnCommit and OnApply are the hooks that
// cmd/aggregator hands to the log and the consumer.
type Metrics struct {
	reg *prometheus.Registry

	received   prometheus.Counter
	unique     prometheus.Counter
	duplicates prometheus.Counter
	publish    *prometheus.HistogramVec
	byCode     map[int]prometheus.Observer // curried publish histograms of the usual codes (read-only)
	fsync      prometheus.Histogram
	perCommit  prometheus.Histogram
	written    prometheus.Counter
	apply      prometheus.Histogram
	perApply   prometheus.Histogram
	inflight   prometheus.Gauge

	watchOnce sync.Once
}

// NewMetrics returns metrics on a new registry that also holds the Go runtime
// and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_received_total",
			Help: "Events acknowledged by POST /publish (durable in the log).",
		}),
		unique: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_unique_total",
			Help: "Events the consumer stored as unique.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_duplicate_total",
			Help: "Events the consumer dropped as duplicates.",
		}),
		publish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aggregator_publish_request_duration_seconds",
			Help:    "Latency of POST /publish by status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"code"}),
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
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aggregator_publish_inflight",
			Help: "Publish requests holding a write-path slot (validated, handed to the log).",
		}),
	}
	m.byCode = map[int]prometheus.Observer{}
	for _, code := range []int{200, 400, 404, 405, 413, 422, 429, 500, 503} {
		m.byCode[code] = m.publish.WithLabelValues(strconv.Itoa(code))
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.received, m.unique, m.duplicates, m.publish,
		m.fsync, m.perCommit, m.written, m.apply, m.perApply, m.inflight,
	)
	return m
}

// Registry returns the registry the metrics are on, for more collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// OnCommit records one group commit of the log: the records and bytes it made
// durable and how long its fsync took. It matches wal.Options.OnCommit.
func (m *Metrics) OnCommit(records, bytes int, fsync time.Duration) {
	m.fsync.Observe(fsync.Seconds())
	m.perCommit.Observe(float64(records))
	m.written.Add(float64(bytes))
}

// OnApply records one chunk applied by the consumer. It matches
// dedup.ConsumerOptions.OnApply.
func (m *Metrics) OnApply(entries, unique, duplicates int, took time.Duration) {
	m.apply.Observe(took.Seconds())
	m.perApply.Observe(float64(entries))
	m.unique.Add(float64(unique))
	m.duplicates.Add(float64(duplicates))
}

func (m *Metrics) observePublish(status, events int, took time.Duration) {
	o, ok := m.byCode[status]
	if !ok {
		o = m.publish.WithLabelValues(strconv.Itoa(status))
	}
	o.Observe(took.Seconds())
	if status == http.StatusOK {
		m.received.Add(float64(events))
	}
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// watch registers the gauges read from b's stats at scrape time; only the
// first Backend watched is registered.
func (m *Metrics) watch(b Backend) {
	m.watchOnce.Do(func() { m.reg.MustRegister(newStatsCollector(b)) })
}

// statsCollector exports the backend's stats as gauges when scraped.
type statsCollector struct {
	backend                                              Backend
	lag, walBytes, segments, last, checkpt, keys, topics *prometheus.Desc
}

func newStatsCollector(b Backend) *statsCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &statsCollector{
		backend:  b,
		lag:      d("aggregator_consumer_lag", "Events in the log that the consumer has not applied yet."),
		walBytes: d("aggregator_wal_bytes", "Bytes of the log's segment files."),
		segments: d("aggregator_wal_segments", "Segment files of the log."),
		last:     d("aggregator_wal_last_offset", "Offset of the last acknowledged event."),
		checkpt:  d("aggregator_consumer_checkpoint", "Offset of the last event applied to the index."),
		keys:     d("aggregator_dedup_keys", "Keys in the deduplication index."),
		topics:   d("aggregator_topics", "Topics with at least one unique event."),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lag, c.walBytes, c.segments, c.last, c.checkpt, c.keys, c.topics} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.backend.Stats(ctx)
	if err != nil {
		return // not ready yet: the gauges are absent rather than wrong
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.lag, float64(st.WAL.Lag))
	gauge(c.walBytes, float64(st.WAL.Bytes))
	gauge(c.segments, float64(st.WAL.Segments))
	gauge(c.last, float64(st.WAL.LastOffset))
	gauge(c.checkpt, float64(st.WAL.Checkpoint))
	gauge(c.keys, float64(st.Dedup.Keys))
	gauge(c.topics, float64(len(st.TopicCounts)))
}
