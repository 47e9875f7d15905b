package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the HTTP metrics of the API, on a registry that GET /metrics
// serves. The log and the index register their own metrics on the same
// registry (cmd/aggregator passes it to them); this package defines only
// its own.
type Metrics struct {
	reg *prometheus.Registry

	received prometheus.Counter
	publish  *prometheus.HistogramVec
	byCode   map[int]prometheus.Observer // curried publish histograms of the usual codes (read-only)
	inflight prometheus.Gauge
	// bodyBytes is the share of the body budget in use.
	bodyBytes prometheus.Gauge
}

// NewMetrics registers the API's metrics on reg and returns them. A nil reg
// means a new registry that also holds the Go runtime and process
// collectors.
func NewMetrics(reg *prometheus.Registry) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := &Metrics{
		reg: reg,
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aggregator_events_received_total",
			Help: "Events acknowledged by POST /publish (durable in the log).",
		}),
		publish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aggregator_publish_request_duration_seconds",
			Help:    "Latency of POST /publish by status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"code"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aggregator_publish_inflight",
			Help: "Publish requests holding a write-path slot (validated, handed to the log).",
		}),
		bodyBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aggregator_publish_body_bytes",
			Help: "Bytes of the body buffers held by publish requests in flight (bounded by --max-inflight-body-bytes).",
		}),
	}
	m.byCode = map[int]prometheus.Observer{}
	for _, code := range []int{200, 400, 404, 405, 413, 415, 422, 429, 500, 503} {
		m.byCode[code] = m.publish.WithLabelValues(strconv.Itoa(code))
	}
	for _, c := range []prometheus.Collector{m.received, m.publish, m.inflight, m.bodyBytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// Registry returns the registry the metrics are on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

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
