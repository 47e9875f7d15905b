package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/natslog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bins are the nats-server and aggregator binaries, built once per run.
var bins struct {
	once      sync.Once
	nats, agg string
	err       error
	took      time.Duration
}

func binaries(tb testing.TB) (natsBin, aggBin string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: no nats-server processes")
	}
	bins.once.Do(func() {
		dir, err := os.MkdirTemp("", "aggregator-cluster-bin-")
		if err != nil {
			bins.err = err
			return
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		bins.nats, bins.agg, bins.err = Build(ctx, ".", "..", dir)
		bins.took = time.Since(start)
	})
	if bins.err != nil {
		tb.Fatal(bins.err)
	}
	tb.Logf("binaries built in %v", bins.took.Round(time.Millisecond))
	return bins.nats, bins.agg
}

// testCluster is 3 nats-server processes and some aggregator nodes.
type testCluster struct {
	tb   testing.TB
	dir  string
	agg  string
	nats *NATS
	aggs []*Aggregator
}

func startCluster(tb testing.TB, nodes int, syncAlways bool) *testCluster {
	tb.Helper()
	natsBin, aggBin := binaries(tb)
	dir := tb.TempDir()
	n, err := NewNATS(NATSOptions{Bin: natsBin, Dir: filepath.Join(dir, "nats"), N: 3, SyncAlways: syncAlways, MaxBatch: 10_000})
	if err != nil {
		tb.Fatal(err)
	}
	c := &testCluster{tb: tb, dir: dir, agg: aggBin, nats: n}
	tb.Cleanup(c.stopAll)
	if err := n.Start(); err != nil {
		tb.Fatal(err)
	}
	for i := range nodes {
		c.addNode(fmt.Sprintf("a%d", i+1), "")
	}
	for _, a := range c.aggs {
		if err := a.WaitReady(90 * time.Second); err != nil {
			c.dumpLogs()
			tb.Fatal(err)
		}
	}
	return c
}

// addNode starts an aggregator node; restoreFrom, when set, is a backup
// (GET /admin/backup of a peer) that `aggregator restore` makes its data
// directory from first.
func (c *testCluster) addNode(name, restoreFrom string) *Aggregator {
	c.tb.Helper()
	ports, err := FreePorts(1)
	if err != nil {
		c.tb.Fatal(err)
	}
	a, err := NewAggregator(c.agg, c.dir, name, fmt.Sprintf("127.0.0.1:%d", ports[0]), c.nats.URL(),
		"--nats-purge-interval", "1s", "--log-level", "debug")
	if err != nil {
		c.tb.Fatal(err)
	}
	if restoreFrom != "" {
		out, err := exec.Command(c.agg, "restore", "--from", restoreFrom, "--data-dir", a.DataDir).CombinedOutput()
		if err != nil {
			c.tb.Fatalf("aggregator restore: %v: %s", err, out)
		}
	}
	if err := a.Start(); err != nil {
		c.tb.Fatal(err)
	}
	c.aggs = append(c.aggs, a)
	return a
}

func (c *testCluster) stopAll() {
	for _, a := range c.aggs {
		if err := a.Stop(20 * time.Second); err != nil {
			c.tb.Errorf("%s: %v", a.Name, err)
		}
	}
	_ = c.nats.Stop()
	if c.tb.Failed() {
		c.dumpLogs()
	}
}

func (c *testCluster) dumpLogs() {
	var paths []string
	for _, a := range c.aggs {
		paths = append(paths, a.LogPath)
	}
	for _, p := range c.nats.Procs {
		paths = append(paths, p.LogPath)
	}
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		c.tb.Logf("---- tail of %s\n%s", p, b)
	}
}

// load is publishers sending requests to the nodes, each resending a
// request until it gets a 200; it records every acknowledged event.
type load struct {
	mu     sync.Mutex
	acked  map[key]bool
	sent   atomic.Int64 // requests that got a 200
	errors atomic.Int64 // attempts that did not
	events atomic.Int64 // acknowledged events, duplicates included
}

// event is one event of a request body.
type testEvent struct {
	Topic     string          `json:"topic"`
	EventID   string          `json:"event_id"`
	Timestamp string          `json:"timestamp"`
	Source    string          `json:"source"`
	Payload   json.RawMessage `json:"payload"`
}

// publisher p sends requests of batch events to target() until stop is
// closed or it sent max requests; a tenth of the events repeat one of its
// earlier events.
func (l *load) publisher(p, batch, maxRequests int, target func() string, stop <-chan struct{}) error {
	rng := rand.New(rand.NewPCG(uint64(p), 7))
	var mine []testEvent
	deadline := time.Now().Add(3 * time.Minute)
	for r := 0; r < maxRequests; r++ {
		select {
		case <-stop:
			return nil
		default:
		}
		evs := make([]testEvent, batch)
		for i := range evs {
			if len(mine) > 0 && rng.IntN(10) == 0 {
				evs[i] = mine[rng.IntN(len(mine))]
				continue
			}
			evs[i] = testEvent{
				Topic:     fmt.Sprintf("t%d", rng.IntN(4)),
				EventID:   fmt.Sprintf("p%d-%d-%d", p, r, i),
				Timestamp: time.Unix(1_760_000_000+int64(rng.IntN(100000)), 0).UTC().Format(time.RFC3339),
				Source:    "cluster-test",
				Payload:   json.RawMessage(fmt.Sprintf(`{"p":%d,"r":%d}`, p, r)),
			}
		}
		body, _ := json.Marshal(evs)
		for attempt := 0; ; attempt++ {
			if time.Now().After(deadline) {
				return fmt.Errorf("publisher %d: request %d not acknowledged before the deadline", p, r)
			}
			status, out, err := post(target(), body)
			if err == nil && status == http.StatusOK {
				break
			}
			if err == nil && status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
				return fmt.Errorf("publisher %d: status %d: %s", p, status, out)
			}
			l.errors.Add(1)
			time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
		}
		l.mu.Lock()
		for _, e := range evs {
			l.acked[key{e.Topic, e.EventID}] = true
		}
		l.mu.Unlock()
		l.sent.Add(1)
		l.events.Add(int64(batch))
		mine = append(mine, evs...)
	}
	return nil
}

// waitSettled waits until every node has applied the whole stream and
// they agree on the counters, and returns them.
func (c *testCluster) waitSettled(nodes []*Aggregator, timeout time.Duration) counters {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	var last []counters
	for time.Now().Before(deadline) {
		last = last[:0]
		ok := true
		for _, a := range nodes {
			s, err := stats(a.URL())
			if err != nil || s.WAL.Lag != 0 || s.WAL.Checkpoint != s.WAL.LastOffset {
				ok = false
				break
			}
			last = append(last, countersOf(s))
		}
		if ok && len(last) == len(nodes) {
			same := true
			for _, x := range last[1:] {
				same = same && x == last[0]
			}
			if same {
				return last[0]
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.tb.Fatalf("nodes did not settle on the same counters within %v: %+v", timeout, last)
	return counters{}
}

// verify checks that every acknowledged event is listed exactly once on
// every node, with the same offset and seq everywhere, and that the feeds of
// all nodes are the same sequence.
func (c *testCluster) verify(nodes []*Aggregator, acked map[key]bool) map[key]identity {
	c.tb.Helper()
	var first map[key]identity
	var firstFeed []event.Stored
	for i, a := range nodes {
		feed := feedAll(c.tb, a.URL())
		for j, e := range feed {
			if e.Seq != uint64(j+1) {
				c.tb.Fatalf("%s: feed position %d has seq %d", a.Name, j, e.Seq)
			}
			if i > 0 && (e.Topic != firstFeed[j].Topic || e.EventID != firstFeed[j].EventID || e.Offset != firstFeed[j].Offset) {
				c.tb.Fatalf("seq %d: %s/%s offset %d on %s, %s/%s offset %d on %s", e.Seq, firstFeed[j].Topic,
					firstFeed[j].EventID, firstFeed[j].Offset, nodes[0].Name, e.Topic, e.EventID, e.Offset, a.Name)
			}
		}
		if i == 0 {
			firstFeed = feed
		} else if len(feed) != len(firstFeed) {
			c.tb.Fatalf("feed of %d events on %s, %d on %s", len(feed), a.Name, len(firstFeed), nodes[0].Name)
		}
		got := listAll(c.tb, a.URL())
		for k := range acked {
			if _, ok := got[k]; !ok {
				c.tb.Fatalf("%s: acknowledged event %v not listed", a.Name, k)
			}
		}
		if i == 0 {
			first = got
			continue
		}
		if len(got) != len(first) {
			c.tb.Fatalf("%s lists %d events, %s %d", a.Name, len(got), nodes[0].Name, len(first))
		}
		for k, id := range first {
			if got[k] != id {
				c.tb.Fatalf("%v: offset and seq %v on %s, %v on %s", k, id, nodes[0].Name, got[k], a.Name)
			}
		}
	}
	return first
}

// TestKillNATSAndAggregatorUnderLoad: 3 NATS servers, 2 aggregator nodes,
// 8 publishers spread over both; kill -9 a NATS server and restart it, then
// kill -9 an aggregator node and restart it, all under load. Every
// acknowledged event must be listed exactly once on both nodes, with the
// same offset, and /stats must agree.
func TestKillNATSAndAggregatorUnderLoad(t *testing.T) {
	c := startCluster(t, 2, false)
	a1, a2 := c.aggs[0], c.aggs[1]
	l := &load{acked: map[key]bool{}}
	const publishers, batch, requests = 8, 50, 400 // 160,000 events
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		node := c.aggs[p%2]
		wg.Go(func() {
			if err := l.publisher(p, batch, requests, node.URL, stop); err != nil {
				errs <- err
			}
		})
	}
	waitFor := func(what string, events int64) {
		if !eventually(2*time.Minute, func() bool { return l.events.Load() >= events }) {
			close(stop)
			wg.Wait()
			t.Fatalf("%s: only %d events acknowledged", what, l.events.Load())
		}
	}
	total := int64(publishers * batch * requests)

	waitFor("before the NATS kill", total/6)
	// The stream leader: the server whose loss forces an election while
	// batches are open on it.
	victim := c.nats.Procs[c.streamLeader()]
	victim.Kill()
	t.Logf("kill -9 %s (the stream leader) at %d acknowledged events", victim.Name, l.events.Load())
	time.Sleep(2 * time.Second)
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted at %d acknowledged events", victim.Name, l.events.Load())

	waitFor("before the aggregator kill", max(l.events.Load()+total/10, total/2))
	a2.Kill()
	t.Logf("kill -9 %s at %d acknowledged events", a2.Name, l.events.Load())
	time.Sleep(time.Second)
	if err := a2.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a2.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted and ready at %d acknowledged events", a2.Name, l.events.Load())

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	ctr := c.waitSettled([]*Aggregator{a1, a2}, time.Minute)
	listed := c.verify([]*Aggregator{a1, a2}, l.acked)
	t.Logf("%d requests acknowledged (%d events with repeats, %d failed attempts retried); "+
		"%d distinct acknowledged events; both nodes: %d listed, received %d = unique %d + duplicates %d, checkpoint %d",
		l.sent.Load(), l.events.Load(), l.errors.Load(), len(l.acked), len(listed),
		ctr.Received, ctr.Unique, ctr.Duplicates, ctr.Checkpoint)
	if ctr.Unique != uint64(len(listed)) || ctr.Received != ctr.Unique+ctr.Duplicates {
		t.Fatalf("counters %+v do not add up to %d listed", ctr, len(listed))
	}
	// Retention: the stream is purged below both checkpoints, and only there.
	if !eventually(15*time.Second, func() bool {
		s, err := stats(a1.URL())
		return err == nil && s.WAL.FirstOffset > 1
	}) {
		t.Fatal("the stream was never purged below the nodes' checkpoints")
	}
	s, _ := stats(a1.URL())
	t.Logf("stream purged: first offset %d, last %d", s.WAL.FirstOffset, s.WAL.LastOffset)
}

// streamLeader returns the index of the NATS server leading the stream.
func (c *testCluster) streamLeader() int {
	c.tb.Helper()
	nc, err := nats.Connect(c.nats.URL())
	if err != nil {
		c.tb.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, natslog.DefaultStream)
	if err != nil {
		c.tb.Fatal(err)
	}
	if ci := s.CachedInfo().Cluster; ci != nil {
		for i := range c.nats.Procs {
			if ci.Leader == fmt.Sprintf("n%d", i+1) {
				return i
			}
		}
	}
	c.tb.Fatal("no stream leader")
	return 0
}

// TestNodeJoinsFromBackup: a new node made with `aggregator restore` from
// a peer's GET /admin/backup, taken while publishers run, consumes from
// the backup's checkpoint + 1 and ends identical to the peers. The servers
// fsync before every acknowledgement here (sync_interval: always), the
// configuration docs/scale-out.md recommends.
func TestNodeJoinsFromBackup(t *testing.T) {
	c := startCluster(t, 2, true)
	a1, a2 := c.aggs[0], c.aggs[1]
	l := &load{acked: map[key]bool{}}
	never := make(chan struct{})
	for p := range 4 {
		if err := l.publisher(p, 100, 20, c.aggs[p%2].URL, never); err != nil {
			t.Fatal(err)
		}
	}
	// The backup is taken while more publishers run.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for p := 4; p < 8; p++ {
		wg.Go(func() { errs <- l.publisher(p, 100, 20, c.aggs[p%2].URL, never) })
	}
	file := filepath.Join(t.TempDir(), "a1.backup")
	checkpoint := backup(t, a1.URL(), file)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	a3 := c.addNode("a3", file)
	if err := a3.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	for p := 8; p < 12; p++ {
		if err := l.publisher(p, 100, 20, c.aggs[p%3].URL, never); err != nil {
			t.Fatal(err)
		}
	}
	ctr := c.waitSettled([]*Aggregator{a1, a2, a3}, time.Minute)
	c.verify([]*Aggregator{a1, a2, a3}, l.acked)
	t.Logf("a3 restored from a backup at checkpoint %d; all three at checkpoint %d, unique %d, duplicates %d",
		checkpoint, ctr.Checkpoint, ctr.Unique, ctr.Duplicates)
	// The new node read only what followed the backup's checkpoint.
	read := metric(t, a3.URL(), "aggregator_nats_read_records_total")
	if want := float64(ctr.LastOffset - checkpoint); read != want {
		t.Fatalf("a3 read %v records, want %v (from the backup's checkpoint %d + 1 to %d)", read, want, checkpoint, ctr.LastOffset)
	}
}

// backup saves GET /admin/backup of a node to file and returns the
// checkpoint it names.
func backup(tb testing.TB, base, file string) uint64 {
	tb.Helper()
	resp, err := http.Get(base + "/admin/backup")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET /admin/backup: %d", resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	checkpoint, err := strconv.ParseUint(resp.Header.Get("X-Aggregator-Checkpoint"), 10, 64)
	if err != nil {
		tb.Fatalf("X-Aggregator-Checkpoint: %v", err)
	}
	return checkpoint
}

// metric reads one unlabelled sample from a node's /metrics.
func metric(tb testing.TB, base, name string) float64 {
	tb.Helper()
	resp, err := httpClient.Get(base + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// TestWholeNATSClusterDown: with every NATS server killed, a node answers
// publishes with 503 and /readyz with 503 while reads go on; once the
// servers are back (sync_interval: always, so kill -9 of all three keeps
// what they acknowledged) publishing resumes and nothing acknowledged is
// missing.
func TestWholeNATSClusterDown(t *testing.T) {
	c := startCluster(t, 1, true)
	a1 := c.aggs[0]
	l := &load{acked: map[key]bool{}}
	never := make(chan struct{})
	if err := l.publisher(0, 100, 10, a1.URL, never); err != nil {
		t.Fatal(err)
	}
	c.waitSettled(c.aggs, time.Minute)
	for _, p := range c.nats.Procs {
		p.Kill()
	}
	body := []byte(`{"topic":"t","event_id":"down-1","timestamp":"2025-10-20T10:00:00Z","source":"s"}`)
	if status, out, err := post(a1.URL(), body); err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("publish with every NATS server down: %d %s %v, want 503", status, out, err)
	}
	if !eventually(10*time.Second, func() bool {
		resp, err := httpClient.Get(a1.URL() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}) {
		t.Fatal("/readyz stayed ready with every NATS server down")
	}
	if _, err := stats(a1.URL()); err != nil {
		t.Fatalf("reads stop with NATS down: %v", err)
	}
	if err := c.nats.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a1.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.publisher(1, 100, 10, a1.URL, never); err != nil {
		t.Fatal(err)
	}
	ctr := c.waitSettled(c.aggs, time.Minute)
	c.verify(c.aggs, l.acked)
	t.Logf("after all three servers were killed and restarted: checkpoint %d, unique %d", ctr.Checkpoint, ctr.Unique)
}
