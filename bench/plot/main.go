// Command plot draws the plots of docs/performance.md from the JSON lines
// that the benchmarks of bench/ append to $BENCH_OUT:
//
//	BENCH_OUT=/tmp/bench.jsonl go test -run '^$' -bench . -benchtime=1x -timeout 60m ./bench/
//	cd bench/plot && go run . -in /tmp/bench.jsonl -out ../../docs/img
//
// It is a module of its own so that the plotting library stays out of the
// service's go.mod.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// result is one line of $BENCH_OUT: a benchmark cell and its figures.
type result struct {
	Cell    string             `json:"cell"`
	Figures map[string]float64 `json:"figures"`
}

func main() {
	in := flag.String("in", "bench.jsonl", "JSON lines written by the benchmarks (BENCH_OUT)")
	out := flag.String("out", ".", "directory for the PNG files")
	flag.Parse()
	results, err := read(*in)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	for name, draw := range map[string]func([]result) (*plot.Plot, error){
		"throughput-single.png": throughputSingle,
		"throughput-batch.png":  throughputBatch,
		"latency.png":           latency,
		"index-growth.png":      indexGrowth,
	} {
		p, err := draw(results)
		if err != nil {
			log.Printf("%s: %v (skipped)", name, err)
			continue
		}
		if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(*out, name)); err != nil {
			log.Fatal(err)
		}
		fmt.Println("wrote", filepath.Join(*out, name))
	}
}

// read returns the results of the file, the last line of each cell winning.
func read(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	byCell := map[string]result{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		r.Cell = strings.TrimPrefix(r.Cell, "Benchmark")
		if _, ok := byCell[r.Cell]; !ok {
			order = append(order, r.Cell)
		}
		byCell[r.Cell] = r
	}
	out := make([]result, 0, len(order))
	for _, c := range order {
		out = append(out, byCell[c])
	}
	return out, sc.Err()
}

// concurrency returns the c=N of a cell name, or 0.
func concurrency(cell string) float64 {
	_, rest, ok := strings.Cut(cell, "c=")
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(strings.SplitN(rest, "/", 2)[0])
	return float64(n)
}

// throughputSingle is requests/s against publishers for single events,
// next to the null handler's.
func throughputSingle(rs []result) (*plot.Plot, error) {
	var ours, null plotter.XYs
	for _, r := range rs {
		if !strings.HasPrefix(r.Cell, "Publish/single/") {
			continue
		}
		c := concurrency(r.Cell)
		ours = append(ours, plotter.XY{X: c, Y: r.Figures["req/s"]})
		null = append(null, plotter.XY{X: c, Y: r.Figures["null_req/s"]})
	}
	if len(ours) == 0 {
		return nil, fmt.Errorf("no Publish/single cells")
	}
	sort.Slice(ours, func(i, j int) bool { return ours[i].X < ours[j].X })
	sort.Slice(null, func(i, j int) bool { return null[i].X < null[j].X })
	p := plot.New()
	p.Title.Text = "Single-event requests: throughput"
	p.X.Label.Text = "concurrent publishers"
	p.Y.Label.Text = "requests/s"
	p.Y.Min = 0
	if err := plotutil.AddLinePoints(p, "aggregator (fsync before 200)", ours, "null net/http handler", null); err != nil {
		return nil, err
	}
	return p, nil
}

// throughputBatch is events/s against publishers for batches of 100 (JSON
// arrays), with the NDJSON and wait=applied cells as points of their own.
func throughputBatch(rs []result) (*plot.Plot, error) {
	series := map[string]plotter.XYs{}
	for _, r := range rs {
		for prefix, name := range map[string]string{
			"Publish/batch=100/": "JSON array", "Publish/ndjson=100/": "NDJSON", "Publish/applied=100/": "?wait=applied",
		} {
			if strings.HasPrefix(r.Cell, prefix) {
				series[name] = append(series[name], plotter.XY{X: concurrency(r.Cell), Y: r.Figures["events/s"]})
			}
		}
	}
	if len(series["JSON array"]) == 0 {
		return nil, fmt.Errorf("no Publish/batch=100 cells")
	}
	p := plot.New()
	p.Title.Text = "Batches of 100 events: throughput"
	p.X.Label.Text = "concurrent publishers"
	p.Y.Label.Text = "events/s acknowledged"
	p.Y.Min = 0
	var args []any
	for _, name := range []string{"JSON array", "NDJSON", "?wait=applied"} {
		xys := series[name]
		if len(xys) == 0 {
			continue
		}
		sort.Slice(xys, func(i, j int) bool { return xys[i].X < xys[j].X })
		args = append(args, name, xys)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, err
	}
	return p, nil
}

// shortName labels a publish cell on an axis: Publish/single/c=16 is
// "1×16", Publish/ndjson=100/c=16 "100×16 nd".
func shortName(cell string) string {
	kind, _, _ := strings.Cut(strings.TrimPrefix(cell, "Publish/"), "/")
	c := strconv.Itoa(int(concurrency(cell)))
	switch {
	case kind == "single":
		return "1×" + c
	case strings.HasPrefix(kind, "ndjson="):
		return "100×" + c + " nd"
	case strings.HasPrefix(kind, "applied="):
		return "100×" + c + " ap"
	default:
		return "100×" + c
	}
}

// latency is p50 and p99 of every publish cell.
func latency(rs []result) (*plot.Plot, error) {
	var cells []result
	for _, r := range rs {
		if strings.HasPrefix(r.Cell, "Publish/") {
			cells = append(cells, r)
		}
	}
	// Single events first, then batches, each by concurrency.
	sort.SliceStable(cells, func(i, j int) bool {
		si, sj := strings.HasPrefix(cells[i].Cell, "Publish/single/"), strings.HasPrefix(cells[j].Cell, "Publish/single/")
		if si != sj {
			return si
		}
		return concurrency(cells[i].Cell) < concurrency(cells[j].Cell)
	})
	var names []string
	var p50, p99 plotter.Values
	for _, r := range cells {
		names = append(names, shortName(r.Cell))
		p50 = append(p50, r.Figures["p50_ms"])
		p99 = append(p99, r.Figures["p99_ms"])
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no publish cells")
	}
	p := plot.New()
	p.Title.Text = "Publish latency (request to 200)"
	p.X.Label.Text = "events per request × publishers (nd: NDJSON, ap: ?wait=applied)"
	p.Y.Label.Text = "ms"
	w := vg.Points(14)
	b50, err := plotter.NewBarChart(p50, w)
	if err != nil {
		return nil, err
	}
	b99, err := plotter.NewBarChart(p99, w)
	if err != nil {
		return nil, err
	}
	b50.Color, b99.Color = plotutil.Color(0), plotutil.Color(1)
	b50.Offset, b99.Offset = -w/2, w/2
	p.Add(b50, b99)
	p.Legend.Add("p50", b50)
	p.Legend.Add("p99", b99)
	p.Legend.Top = true
	p.NominalX(names...)
	return p, nil
}

// indexGrowth is the publish rate and the anonymous memory against the
// stored events.
func indexGrowth(rs []result) (*plot.Plot, error) {
	var rate, applied, rss plotter.XYs
	for _, r := range rs {
		if strings.HasPrefix(r.Cell, "IndexGrowth/") {
			x := r.Figures["stored_events"] / 1e6
			rate = append(rate, plotter.XY{X: x, Y: r.Figures["events/s"] / 1000})
			applied = append(applied, plotter.XY{X: x, Y: r.Figures["applied_events/s"] / 1000})
			rss = append(rss, plotter.XY{X: x, Y: r.Figures["rss_anon_MiB"]})
		}
	}
	if len(rate) == 0 {
		return nil, fmt.Errorf("no IndexGrowth cells")
	}
	p := plot.New()
	p.Title.Text = "Cost as the index grows (16 × 100-event batches)"
	p.X.Label.Text = "stored events (millions)"
	p.Y.Label.Text = "k events/s; MiB"
	p.Y.Min = 0
	if err := plotutil.AddLinePoints(p, "publish rate (k events/s)", rate, "applied rate, run and drain (k events/s)", applied,
		"anonymous RSS at lag 0 (MiB)", rss); err != nil {
		return nil, err
	}
	return p, nil
}
