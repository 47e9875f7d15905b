// Package interop drives real shippers against the real aggregator binary:
// here Benthos (cmd/benthos, built from this module) with its http_client
// output. Each case ends with every event listed exactly once.
//
// It is a module of its own so that the service's go.mod does not carry
// Benthos' dependencies; run it with `cd interop && go test ./...` (make
// test does).
package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// Binaries built once by TestMain.
var (
	aggregatorBin string
	benthosBin    string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "interop-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	aggregatorBin = filepath.Join(dir, "aggregator")
	benthosBin = filepath.Join(dir, "benthos")
	for _, b := range []struct{ out, dir, pkg string }{
		{aggregatorBin, "..", "./cmd/aggregator"},
		{benthosBin, ".", "./cmd/benthos"},
	} {
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = b.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
		fmt.Printf("interop: built %s in %v\n", b.pkg, time.Since(start).Round(time.Second))
	}
	return m.Run()
}

// server is the aggregator binary running as a child process on a fixed
// loopback port (Benthos' URL must survive a restart).
type server struct {
	tb   testing.TB
	addr string
	dir  string
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startServer(tb testing.TB, args ...string) *server {
	tb.Helper()
	s := &server{tb: tb, addr: freeAddr(tb), dir: tb.TempDir(), args: args, out: &syncBuffer{}}
	s.start()
	tb.Cleanup(func() {
		s.kill()
		if tb.Failed() {
			tb.Logf("aggregator output:\n%s", s.out.String())
		}
	})
	return s
}

func (s *server) start() {
	s.tb.Helper()
	args := append([]string{"--addr", s.addr, "--data-dir", s.dir, "--log-format", "json"}, s.args...)
	s.cmd = exec.Command(aggregatorBin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	go func() { _ = s.cmd.Wait(); close(done) }()
	poll.Until(s.tb, 30*time.Second, "the aggregator to be ready", func() bool {
		status, _, err := s.get("/readyz")
		return err == nil && status == http.StatusOK
	})
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *server) get(path string) (int, []byte, error) {
	resp, err := http.Get("http://" + s.addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

type stats struct {
	Received         uint64 `json:"received"`
	UniqueProcessed  uint64 `json:"unique_processed"`
	DuplicateDropped uint64 `json:"duplicate_dropped"`
	WAL              struct {
		Lag uint64 `json:"lag"`
	} `json:"wal"`
}

func (s *server) stats() (stats, error) {
	var st stats
	status, b, err := s.get("/stats")
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("GET /stats: %d %s", status, b)
	}
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	return st, err
}

// drained polls /stats until the consumer has applied every received event.
func (s *server) drained() stats {
	s.tb.Helper()
	var st stats
	poll.Until(s.tb, 30*time.Second, "the consumer to catch up", func() bool {
		var err error
		st, err = s.stats()
		return err == nil && st.WAL.Lag == 0 && st.Received == st.UniqueProcessed+st.DuplicateDropped
	})
	return st
}

// listed pages through GET /events?topic= and counts each event_id.
func (s *server) listed(topic string) map[string]int {
	s.tb.Helper()
	ids := map[string]int{}
	cursor := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"topic": {topic}, "limit": {"500"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		status, b, err := s.get("/events?" + q.Encode())
		if err != nil || status != http.StatusOK {
			s.tb.Fatalf("GET /events: %d %s %v", status, b, err)
		}
		var p struct {
			Events []struct {
				EventID string `json:"event_id"`
			} `json:"events"`
			NextCursor *string `json:"next_cursor"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			s.tb.Fatal(err)
		}
		for _, e := range p.Events {
			ids[e.EventID]++
		}
		if p.NextCursor == nil {
			return ids
		}
		cursor = *p.NextCursor
	}
	s.tb.Fatal("listing does not end")
	return nil
}

var refusedRE = regexp.MustCompile(`(?m)^aggregator_publish_request_duration_seconds_count\{code="(429|503)"\} (\d+)$`)

// refusals returns the 429 and 503 answers to POST /publish so far (of this
// process: the metrics restart with it).
func (s *server) refusals() int {
	_, b, err := s.get("/metrics")
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range refusedRE.FindAllSubmatch(b, -1) {
		v, _ := strconv.Atoi(string(m[2]))
		n += v
	}
	return n
}

// shipper is the Benthos part of a case's config: how to batch and send.
type shipper struct {
	batching    string // YAML of output.http_client.batching ("" = one request per event)
	headers     string // YAML map entries of output.http_client.headers
	maxInFlight int
	interval    string // of the generate input
}

// benthosConfig is a whole Benthos config sending n events of topic to
// addr. Events carry their own event_id, so a replay (Benthos resends
// nacked messages) is a duplicate.
func benthosConfig(addr, topic string, n int, sh shipper) string {
	batching := ""
	if sh.batching != "" {
		batching = "    batching:\n" + indent(sh.batching, 6)
	}
	return fmt.Sprintf(`http:
  enabled: false
logger:
  level: WARN
  format: logfmt
input:
  generate:
    count: %d
    interval: %q
    mapping: |
      let n = counter()
      root.topic = %q
      root.event_id = "e-" + $n.string()
      root.timestamp = now()
      root.source = "benthos"
      root.payload = {"n": $n}
output:
  http_client:
    url: http://%s/publish
    verb: POST
    headers:
      Content-Type: application/json
%s    timeout: 5s
    retry_period: 50ms
    max_retry_backoff: 1s
    retries: 3
    backoff_on: [429, 503]
    max_in_flight: %d
%s`, n, sh.interval, topic, addr, indent(sh.headers, 6), sh.maxInFlight, batching)
}

func indent(s string, n int) string {
	if s == "" {
		return ""
	}
	pad := strings.Repeat(" ", n)
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pad + line + "\n")
	}
	return b.String()
}

// benthos runs Benthos with config until its input is done and everything
// is delivered (it exits 0), or fails the test after timeout.
type benthosRun struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startBenthos(tb testing.TB, config string) *benthosRun {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "benthos.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	r := &benthosRun{out: &syncBuffer{}, done: make(chan error, 1)}
	r.cmd = exec.Command(benthosBin, "-c", path)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	tb.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		if tb.Failed() {
			tb.Logf("benthos config:\n%s\nbenthos output:\n%s", config, r.out.String())
		}
	})
	return r
}

func (r *benthosRun) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case err := <-r.done:
		if err != nil {
			tb.Fatalf("benthos: %v", err)
		}
	case <-ctx.Done():
		tb.Fatalf("benthos did not finish within %v", timeout)
	}
}

// verify checks that every one of the n events is listed exactly once and
// the counters agree, and logs the case's row.
func verify(tb testing.TB, s *server, name, topic string, n int) stats {
	tb.Helper()
	st := s.drained()
	ids := s.listed(topic)
	listed := 0
	for i := 1; i <= n; i++ {
		switch c := ids["e-"+strconv.Itoa(i)]; c {
		case 1:
			listed++
		case 0:
			tb.Errorf("e-%d never listed", i)
		default:
			tb.Errorf("e-%d listed %d times", i, c)
		}
	}
	if len(ids) != n {
		tb.Errorf("listed %d distinct ids, want %d", len(ids), n)
	}
	if st.UniqueProcessed != uint64(n) || st.Received != st.UniqueProcessed+st.DuplicateDropped {
		tb.Errorf("stats %+v, want %d unique and received = unique + duplicates", st, n)
	}
	tb.Logf("INTEROP | %-16s | sent %5d | received %5d | unique %5d | duplicates %4d | listed %5d |",
		name, n, st.Received, st.UniqueProcessed, st.DuplicateDropped, listed)
	return st
}

const (
	jsonArray = "count: 50\nperiod: 20ms\nprocessors:\n  - archive:\n      format: json_array\n"
	ndjson    = "count: 50\nperiod: 20ms\nprocessors:\n  - archive:\n      format: lines\n"
	gzipArray = jsonArray + "  - compress:\n      algorithm: gzip\n"
	// smallArray makes many small requests, for the 429 storm.
	smallArray = "count: 10\nperiod: 20ms\nprocessors:\n  - archive:\n      format: json_array\n"
)

func TestBenthos(t *testing.T) {
	cases := []struct {
		name    string
		n       int
		args    []string // of the aggregator
		shipper shipper
	}{
		{"single", 300, nil, shipper{maxInFlight: 8}},
		{"json-array", 2000, nil, shipper{batching: jsonArray, maxInFlight: 4}},
		{"ndjson", 2000, nil, shipper{batching: ndjson, headers: "Content-Type: application/x-ndjson", maxInFlight: 4}},
		{"gzip", 2000, nil, shipper{batching: gzipArray, headers: "Content-Encoding: gzip", maxInFlight: 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, tc.args...)
			topic := "interop-" + tc.name
			startBenthos(t, benthosConfig(s.addr, topic, tc.n, tc.shipper)).wait(t, 3*time.Minute)
			verify(t, s, tc.name, topic, tc.n)
		})
	}
}

// TestBenthos429Storm runs the aggregator with one write-path slot and no
// wait, against 32 requests of 10 events in flight: many are refused with
// 429, and Benthos retries until every event is in.
func TestBenthos429Storm(t *testing.T) {
	const n = 3000
	s := startServer(t, "--max-inflight-publish", "1", "--inflight-wait", "0")
	topic := "interop-429"
	startBenthos(t, benthosConfig(s.addr, topic, n, shipper{batching: smallArray, maxInFlight: 32})).wait(t, 3*time.Minute)
	refused := s.refusals()
	verify(t, s, "429-storm", topic, n)
	t.Logf("429 storm: %d requests refused with 429/503 and retried", refused)
	if refused == 0 {
		t.Fatal("no request was refused: the storm did not happen")
	}
}

// TestBenthosServerRestart kills the aggregator (SIGKILL) while Benthos
// sends and starts it again on the same address and data: Benthos retries
// what failed, and every event is listed once.
func TestBenthosServerRestart(t *testing.T) {
	const n = 3000
	s := startServer(t)
	topic := "interop-restart"
	run := startBenthos(t, benthosConfig(s.addr, topic, n, shipper{batching: jsonArray, maxInFlight: 4, interval: "1ms"}))
	poll.Until(t, time.Minute, "a third of the events to arrive", func() bool {
		st, err := s.stats()
		return err == nil && st.Received >= n/3
	})
	before, _ := s.stats()
	s.kill()
	s.start()
	run.wait(t, 3*time.Minute)
	st := verify(t, s, "restart", topic, n)
	t.Logf("restart: killed at %d received; %d duplicates after the restart (retried requests whose reply was lost)",
		before.Received, st.DuplicateDropped)
	if before.Received >= n {
		t.Fatal("the server was killed after everything arrived: no restart in the middle")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
