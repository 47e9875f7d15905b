// Command clusterbench measures publishing through a 3-server NATS stream
// with 1, 2 and 3 aggregator nodes, with the servers' default sync and with
// sync_interval: always (docs/scale-out.md, Measurements). Per run it starts
// fresh servers and nodes on loopback, runs one `loadgen publish` per node
// at the same time (the publishers spread over the nodes), waits until every
// node has applied everything, and prints one JSON line: events/s, the
// loadgens' latency percentiles, and the CPU time each process used during
// the run (utime+stime from /proc/<pid>/stat, the counters getrusage reads)
// per event.
//
// Usage (bench/cluster-runs.sh builds the binaries and runs the grid):
//
//	clusterbench -nats-bin B -agg-bin B -loadgen-bin B -nodes 1,2,3 -sync default,always -events 600000
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aggregator-dev/aggregator/cluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "clusterbench:", err)
		os.Exit(1)
	}
}

type config struct {
	natsBin, aggBin, loadgenBin, work   string
	nodes                               []int
	syncs                               []string
	events, concurrency, batch, payload int
	dup                                 float64
	duration                            time.Duration
	repeat                              int
	loadgenArgs                         []string
}

func run(args []string) error {
	var c config
	fs := flag.NewFlagSet("clusterbench", flag.ContinueOnError)
	fs.StringVar(&c.natsBin, "nats-bin", "bin/nats-server", "nats-server binary")
	fs.StringVar(&c.aggBin, "agg-bin", "bin/aggregator", "aggregator binary")
	fs.StringVar(&c.loadgenBin, "loadgen-bin", "bin/loadgen", "loadgen binary")
	fs.StringVar(&c.work, "work", "/tmp/clusterbench", "work directory (emptied per run)")
	nodes := fs.String("nodes", "1,2,3", "aggregator node counts to run")
	syncs := fs.String("sync", "default,always", "server sync settings to run: default, always")
	fs.IntVar(&c.events, "events", 600_000, "events per run, all loadgens together")
	fs.IntVar(&c.concurrency, "concurrency", 16, "publishers per run, spread over the nodes")
	fs.IntVar(&c.batch, "batch", 100, "events per request")
	fs.IntVar(&c.payload, "payload", 256, "payload bytes per event")
	fs.Float64Var(&c.dup, "dup", 0.2, "fraction of duplicates")
	fs.DurationVar(&c.duration, "duration", 60*time.Second, "time cap of each loadgen")
	fs.IntVar(&c.repeat, "repeat", 3, "runs per cell")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	c.loadgenArgs = fs.Args()
	for _, s := range strings.Split(*nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-nodes %q", *nodes)
		}
		c.nodes = append(c.nodes, n)
	}
	c.syncs = strings.Split(*syncs, ",")
	for _, syncMode := range c.syncs {
		for _, n := range c.nodes {
			for r := 1; r <= c.repeat; r++ {
				res, err := c.one(syncMode, n, r)
				if err != nil {
					return fmt.Errorf("sync %s, %d nodes, run %d: %w", syncMode, n, r, err)
				}
				line, _ := json.Marshal(res)
				fmt.Println(string(line))
			}
		}
	}
	return nil
}

// result is one run.
type result struct {
	Sync         string             `json:"sync"`
	Nodes        int                `json:"nodes"`
	Run          int                `json:"run"`
	Load1        string             `json:"load1_before"`
	EventsAcked  int                `json:"events_acked"`
	ElapsedS     float64            `json:"elapsed_s"`        // the slowest loadgen
	EventsPerS   float64            `json:"events_per_s"`     // acked events / elapsed
	ApplyS       float64            `json:"apply_s"`          // from the start until every node has lag 0
	P50MS        []float64          `json:"p50_ms"`           // per loadgen
	P99MS        []float64          `json:"p99_ms"`           // per loadgen
	CPUPerEvent  map[string]float64 `json:"cpu_us_per_event"` // process -> µs of CPU per acknowledged event
	CPUSeconds   map[string]float64 `json:"cpu_s"`
	LoadgenCPU   float64            `json:"loadgen_cpu_s"`
	StreamEvents uint64             `json:"stream_last_seq"`
}

func (c *config) one(syncMode string, nodes, run int) (*result, error) {
	if err := os.RemoveAll(c.work); err != nil {
		return nil, err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	res := &result{Sync: syncMode, Nodes: nodes, Run: run, Load1: strings.Fields(string(load) + " ?")[0],
		CPUPerEvent: map[string]float64{}, CPUSeconds: map[string]float64{}}
	n, err := cluster.NewNATS(cluster.NATSOptions{Bin: c.natsBin, Dir: filepath.Join(c.work, "nats"), N: 3,
		SyncAlways: syncMode == "always", MaxBatch: 10_000})
	if err != nil {
		return nil, err
	}
	var aggs []*cluster.Aggregator
	defer func() {
		for _, a := range aggs {
			_ = a.Stop(30 * time.Second)
		}
		_ = n.Stop()
	}()
	if err := n.Start(); err != nil {
		return nil, err
	}
	ports, err := cluster.FreePorts(nodes)
	if err != nil {
		return nil, err
	}
	for i := range nodes {
		a, err := cluster.NewAggregator(c.aggBin, c.work, fmt.Sprintf("a%d", i+1), fmt.Sprintf("127.0.0.1:%d", ports[i]),
			n.URL(), "--nats-max-batch", "10000")
		if err != nil {
			return nil, err
		}
		if err := a.Start(); err != nil {
			return nil, err
		}
		aggs = append(aggs, a)
	}
	for _, a := range aggs {
		if err := a.WaitReady(2 * time.Minute); err != nil {
			return nil, err
		}
	}
	procs := map[string]*cluster.Proc{}
	for i, p := range n.Procs {
		procs[fmt.Sprintf("nats-n%d", i+1)] = p
	}
	for _, a := range aggs {
		procs[strings.ReplaceAll(a.Name, " ", "-")] = &a.Proc
	}
	before := map[string]time.Duration{}
	for name, p := range procs {
		u, s, err := p.CPU()
		if err != nil {
			return nil, err
		}
		before[name] = u + s
	}

	// One loadgen per node, each with its share of events and publishers.
	type lgOut struct {
		EventsAcked int     `json:"events_acked"`
		ElapsedS    float64 `json:"elapsed_s"`
		ClientCPUS  float64 `json:"client_cpu_s"`
		LatencyMS   struct {
			P50 float64 `json:"p50"`
			P99 float64 `json:"p99"`
		} `json:"latency_ms"`
	}
	outs := make([]lgOut, nodes)
	errs := make([]error, nodes)
	start := time.Now()
	var wg sync.WaitGroup
	for i, a := range aggs {
		wg.Go(func() {
			args := append([]string{"publish", "--target", a.URL(), "--json",
				"--events", strconv.Itoa(c.events / nodes), "--concurrency", strconv.Itoa(max(1, c.concurrency/nodes)),
				"--batch", strconv.Itoa(c.batch), "--payload", strconv.Itoa(c.payload),
				"--dup", strconv.FormatFloat(c.dup, 'f', -1, 64), "--duration", c.duration.String(),
				"--run-id", fmt.Sprintf("r%d-n%d", run, i), "--seed", strconv.Itoa(run)}, c.loadgenArgs...)
			cmd := exec.Command(c.loadgenBin, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("loadgen: %w: %s", err, stderr.String())
				return
			}
			if err := json.Unmarshal(lastLine(stdout.Bytes()), &outs[i]); err != nil {
				errs[i] = fmt.Errorf("loadgen output %q: %w", stdout.String(), err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Every node must have applied everything before the CPU is read.
	last, err := waitLagZero(aggs, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	res.ApplyS = time.Since(start).Seconds()
	res.StreamEvents = last
	for _, o := range outs {
		res.EventsAcked += o.EventsAcked
		res.ElapsedS = max(res.ElapsedS, o.ElapsedS)
		res.P50MS = append(res.P50MS, o.LatencyMS.P50)
		res.P99MS = append(res.P99MS, o.LatencyMS.P99)
		res.LoadgenCPU += o.ClientCPUS
	}
	if res.ElapsedS > 0 {
		res.EventsPerS = float64(res.EventsAcked) / res.ElapsedS
	}
	for name, p := range procs {
		u, s, err := p.CPU()
		if err != nil {
			return nil, err
		}
		cpu := u + s - before[name]
		res.CPUSeconds[name] = cpu.Seconds()
		if res.EventsAcked > 0 {
			res.CPUPerEvent[name] = float64(cpu.Microseconds()) / float64(res.EventsAcked)
		}
	}
	return res, nil
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

// waitLagZero polls every node's /stats until all have applied the same
// last sequence; it returns that sequence.
func waitLagZero(aggs []*cluster.Aggregator, timeout time.Duration) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	for ctx.Err() == nil {
		var seen []uint64
		for _, a := range aggs {
			var st struct {
				WAL struct {
					LastOffset uint64 `json:"last_offset"`
					Checkpoint uint64 `json:"checkpoint"`
					Lag        uint64 `json:"lag"`
				} `json:"wal"`
			}
			resp, err := client.Get(a.URL() + "/stats")
			if err != nil {
				break
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if json.Unmarshal(b, &st) != nil || st.WAL.Lag != 0 {
				break
			}
			seen = append(seen, st.WAL.Checkpoint)
		}
		if len(seen) == len(aggs) && allSame(seen) {
			return seen[0], nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, errors.New("nodes did not reach lag 0")
}

func allSame(v []uint64) bool {
	for _, x := range v[1:] {
		if x != v[0] {
			return false
		}
	}
	return true
}
