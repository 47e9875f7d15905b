package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// drillConfig describes a crash drill.
type drillConfig struct {
	Server      string        // aggregator binary; "" builds BuildPkg
	BuildPkg    string        // go package built when Server is "" (default ./cmd/aggregator)
	DataDir     string        // fresh data directory; "" makes one in the work directory
	WorkDir     string        // server log, acklog and (default) data; "" makes a temporary one, removed if all passed
	Cycles      int           // kill -9 cycles (default 5)
	Gen         genConfig     // events of each cycle (RunID is set per cycle)
	Concurrency int           // concurrent publishers
	ServerArgs  []string      // extra flags of every server start
	Timeout     time.Duration // bound of every wait: ready, lag 0, one publish round (default 60s)
	Keep        bool          // keep the work directory even when every case passed
	Out         io.Writer     // one line per case
}

// drillResult counts the cases of a drill.
type drillResult struct {
	Passed, Failed int
	WorkDir        string // data dir, server log and acklog
}

// drillRun is the state of one drill.
type drillRun struct {
	cfg      drillConfig
	bin      string
	addr     string
	base     string
	dataDir  string
	workDir  string
	client   *http.Client
	srv      *serverProc
	logFile  *os.File
	ackPath  string
	ackFile  *os.File
	acks     *ackLog
	rng      *rand.Rand
	expected int // unique events published over all cases so far; -1 once a case failed midway
}

// drill runs the crash drill: Cycles of publish + kill -9 at a random moment
// + restart + catch-up + verify, then two torn tails (a cut record; garbage
// and a cut record), then SIGTERM, then one more kill -9 cycle. An error is
// returned only when the drill could not be set up.
func drill(ctx context.Context, cfg drillConfig) (res drillResult, err error) {
	if cfg.Cycles <= 0 {
		cfg.Cycles = 5
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.BuildPkg == "" {
		cfg.BuildPkg = "./cmd/aggregator"
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	cfg.Gen.RunID = "probe"
	if err := cfg.Gen.validate(); err != nil {
		return res, fmt.Errorf("%w: %v", errUsage, err)
	}

	d := &drillRun{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Gen.Seed, 0x5eed))}
	d.workDir = cfg.WorkDir
	if d.workDir == "" {
		if d.workDir, err = os.MkdirTemp("", "aggregator-drill-"); err != nil {
			return res, fmt.Errorf("work dir: %w", err)
		}
	} else {
		cfg.Keep = true
	}
	res.WorkDir = d.workDir
	defer func() {
		d.close()
		if err == nil && res.Failed == 0 && !cfg.Keep {
			_ = os.RemoveAll(d.workDir)
			res.WorkDir = ""
		}
	}()
	if err := d.setup(ctx); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Out, "drill: seed %d, server %s on %s, data %s, log %s\n",
		cfg.Gen.Seed, d.bin, d.addr, d.dataDir, d.logFile.Name())

	report := func(name string, detail string, err error) {
		if err != nil {
			res.Failed++
			fmt.Fprintf(cfg.Out, "%s: FAIL: %v\n", name, err)
			return
		}
		res.Passed++
		fmt.Fprintf(cfg.Out, "%s: ok: %s\n", name, detail)
	}
	for k := 1; k <= cfg.Cycles && ctx.Err() == nil; k++ {
		detail, err := d.crashCase(ctx, fmt.Sprintf("c%d", k), cfg.Gen.Events, nil)
		report(fmt.Sprintf("cycle %d/%d", k, cfg.Cycles), detail, err)
	}
	for i, garbage := range []bool{false, true} {
		if ctx.Err() != nil {
			break
		}
		name := "torn tail (cut record)"
		if garbage {
			name = "torn tail (garbage + cut record)"
		}
		tear := func() (string, error) { return d.tearTail(garbage) }
		detail, err := d.crashCase(ctx, fmt.Sprintf("torn%d", i+1), max(cfg.Gen.Events/2, 1), tear)
		report(name, detail, err)
	}
	if ctx.Err() == nil {
		detail, err := d.sigtermCase(ctx)
		report("sigterm", detail, err)
	}
	if ctx.Err() == nil {
		// A crash after a clean restart: state a clean shutdown leaves behind
		// (a filter snapshot, say) must not survive into a crashed run.
		detail, err := d.crashCase(ctx, "after-sigterm", cfg.Gen.Events, nil)
		report("kill -9 after clean restart", detail, err)
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("drill interrupted: %w", ctx.Err())
	}
	return res, nil
}

func (d *drillRun) setup(ctx context.Context) error {
	var err error
	d.bin = d.cfg.Server
	if d.bin == "" {
		d.bin = filepath.Join(d.workDir, "aggregator")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", d.bin, d.cfg.BuildPkg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("build %s: %w\n%s", d.cfg.BuildPkg, err, out)
		}
	}
	d.dataDir = d.cfg.DataDir
	if d.dataDir == "" {
		d.dataDir = filepath.Join(d.workDir, "data")
	} else if ents, err := os.ReadDir(d.dataDir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%w: data dir %s is not empty (the drill needs a fresh one)", errUsage, d.dataDir)
	}
	if d.logFile, err = os.Create(filepath.Join(d.workDir, "server.log")); err != nil {
		return fmt.Errorf("server log: %w", err)
	}
	d.ackPath = filepath.Join(d.workDir, "acklog")
	if d.ackFile, err = os.Create(d.ackPath); err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	d.acks = newAckLog(d.ackFile)
	if d.addr, err = freeAddr(); err != nil {
		return err
	}
	d.base = "http://" + d.addr
	d.client = newClient(d.cfg.Concurrency)
	if _, err := d.start(ctx); err != nil {
		return fmt.Errorf("first start: %w", err)
	}
	return nil
}

func (d *drillRun) close() {
	if d.srv != nil && !d.srv.exited() {
		if code, err := d.srv.terminate(d.cfg.Timeout); err != nil || code != 0 {
			fmt.Fprintf(d.cfg.Out, "drill: final SIGTERM: exit code %d, %v\n", code, err)
		}
	}
	if d.client != nil {
		d.client.CloseIdleConnections()
	}
	if d.ackFile != nil {
		_ = d.acks.Flush()
		_ = d.ackFile.Close()
	}
	if d.logFile != nil {
		_ = d.logFile.Close()
	}
}

// start starts the server and waits until it is ready.
func (d *drillRun) start(ctx context.Context) (time.Duration, error) {
	fmt.Fprintf(d.logFile, "=== drill: start %s\n", time.Now().UTC().Format(time.RFC3339Nano))
	d.client.CloseIdleConnections() // connections to a killed server are dead
	srv, err := startServer(d.bin, d.addr, d.dataDir, d.logFile, d.cfg.ServerArgs...)
	if err != nil {
		return 0, err
	}
	d.srv = srv
	took, err := waitReady(ctx, d.client, d.base, srv, d.cfg.Timeout)
	if err != nil {
		srv.kill()
		return 0, fmt.Errorf("%w (see %s)", err, d.logFile.Name())
	}
	return took, nil
}

// ensureRunning restarts the server if an earlier failed case left it down.
func (d *drillRun) ensureRunning(ctx context.Context) error {
	if d.srv != nil && !d.srv.exited() {
		return nil
	}
	_, err := d.start(ctx)
	return err
}

// crashCase publishes n events with duplicates, kills the server with
// SIGKILL when a random share of them is acknowledged, runs damage (if any)
// on the stopped server's files, restarts it, resends every request that
// was not acknowledged, waits for lag 0 and verifies.
func (d *drillRun) crashCase(ctx context.Context, name string, n int, damage func() (string, error)) (string, error) {
	if err := d.ensureRunning(ctx); err != nil {
		return "", err
	}
	g := d.cfg.Gen
	g.Events = n
	g.RunID = fmt.Sprintf("drill%d-%s", g.Seed%1000000, name)
	g.Seed = d.rng.Uint64()
	p, err := buildPlan(g)
	if err != nil {
		return "", err
	}
	pb := &publisher{client: d.client, base: d.base, raw: true, plan: p, concurrency: d.cfg.Concurrency, acks: d.acks}
	// Until every request is acknowledged, how many of these events the
	// service holds is unknown; a failure below leaves it unknown.
	known := d.expected
	d.expected = -1

	share := 0.1 + 0.8*d.rng.Float64()
	killAfter := int64(share * float64(p.events))
	pubCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan *publishResult, 1)
	start := time.Now()
	go func() { done <- pb.run(pubCtx, nil, d.cfg.Timeout) }() // joined below
	var first *publishResult
	tick := time.NewTicker(time.Millisecond)
	deadline := time.NewTimer(d.cfg.Timeout)
wait:
	for pb.ackedEvents.Load() < killAfter {
		select {
		case first = <-done:
			break wait
		case <-deadline.C:
			break wait
		case <-tick.C:
		}
	}
	tick.Stop()
	deadline.Stop()
	d.srv.kill()
	killedAt := time.Since(start)
	ackedAtKill := pb.ackedEvents.Load()
	cancel()
	if first == nil {
		first = <-done
	}
	acked := first.Acked

	detail := fmt.Sprintf("killed at %s with %d/%d events acked", killedAt.Round(time.Millisecond), ackedAtKill, p.events)
	if damage != nil {
		what, err := damage()
		if err != nil {
			return "", fmt.Errorf("damage: %w", err)
		}
		detail += "; " + what
	}
	ready, err := d.start(ctx)
	if err != nil {
		return "", fmt.Errorf("restart after kill: %w", err)
	}
	detail += fmt.Sprintf("; ready in %s", ready.Round(time.Millisecond))

	retried := 0
	for round := 0; round < 3; round++ {
		var todo []int
		for i, ok := range acked {
			if !ok {
				todo = append(todo, i)
			}
		}
		if len(todo) == 0 {
			break
		}
		retried += len(todo)
		r := pb.run(ctx, todo, d.cfg.Timeout)
		for i, ok := range r.Acked {
			acked[i] = acked[i] || ok
		}
	}
	if missing := len(acked) - countTrue(acked); missing > 0 {
		return "", fmt.Errorf("%d requests still not acknowledged after 3 retry rounds: %s", missing, detail)
	}
	if known >= 0 {
		d.expected = known + p.unique
	}
	rep, err := d.verify(ctx)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, detail)
	}
	return detail + fmt.Sprintf("; resent %d requests; %s", retried, rep), nil
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// verify waits for lag 0 and checks the acklog and the counters, and that
// the service holds exactly the unique events published so far.
func (d *drillRun) verify(ctx context.Context) (string, error) {
	if err := d.acks.Flush(); err != nil {
		return "", err
	}
	f, err := os.Open(d.ackPath)
	if err != nil {
		return "", fmt.Errorf("open acklog: %w", err)
	}
	acked, _, err := readAckLog(f)
	f.Close()
	if err != nil {
		return "", err
	}
	start := time.Now()
	if _, err := waitLagZero(ctx, d.client, d.base, d.cfg.Timeout); err != nil {
		return "", err
	}
	lag0 := time.Since(start)
	rep, err := verify(ctx, d.client, verifyConfig{Base: d.base, Acked: acked, PageSize: 1000, Timeout: d.cfg.Timeout})
	if err != nil {
		return "", fmt.Errorf("verify: %w", err)
	}
	if !rep.OK() {
		return "", fmt.Errorf("verify: %s", rep)
	}
	if d.expected >= 0 && rep.Stats.UniqueProcessed != uint64(d.expected) {
		return "", fmt.Errorf("verify: unique_processed %d, want %d (every unique event published so far)",
			rep.Stats.UniqueProcessed, d.expected)
	}
	return fmt.Sprintf("lag 0 in %s; %d acked events listed once, received %d = unique %d + duplicates %d",
		lag0.Round(time.Millisecond), rep.Acked, rep.Stats.Received, rep.Stats.UniqueProcessed, rep.Stats.DuplicateDropped), nil
}

// tearTail appends a cut record, preceded by garbage if asked, to the newest
// segment file of the stopped server's write-ahead log: what a torn write
// leaves behind.
func (d *drillRun) tearTail(withGarbage bool) (string, error) {
	walDir := filepath.Join(d.dataDir, "wal")
	ents, err := os.ReadDir(walDir)
	if err != nil {
		return "", fmt.Errorf("read wal dir: %w", err)
	}
	newest := ""
	for _, e := range ents {
		if e.Type().IsRegular() && isSegmentName(e.Name()) && segmentLess(newest, e.Name()) {
			newest = e.Name()
		}
	}
	if newest == "" {
		return "", fmt.Errorf("no segment file (a name of digits) in %s", walDir)
	}
	path := filepath.Join(walDir, newest)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read segment: %w", err)
	}
	if len(data) < 2 {
		return "", fmt.Errorf("segment %s has %d bytes, nothing to cut", newest, len(data))
	}
	var garbage []byte
	if withGarbage {
		garbage = make([]byte, 61)
	}
	for i := range garbage {
		garbage[i] = byte(d.rng.UintN(256))
	}
	// The segment starts with a whole record, and every record the drill
	// writes is longer than 40 bytes (an event of its own alone is more), so
	// the first 40 bytes are a record cut short the way a torn write leaves it.
	cut := data[:min(len(data)/2, 40)]
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return "", fmt.Errorf("open segment: %w", err)
	}
	_, werr := f.Write(append(garbage, cut...))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return "", fmt.Errorf("append to segment: %w", err)
	}
	what := fmt.Sprintf("a %d-byte cut record", len(cut))
	if len(garbage) > 0 {
		what = fmt.Sprintf("%d garbage bytes and %s", len(garbage), what)
	}
	return fmt.Sprintf("appended %s to %s (%d bytes)", what, newest, len(data)), nil
}

// isSegmentName reports whether name is a segment file name: decimal digits
// only (tidwall/wal names segments by their first index), so LOCK and
// temporary files are never torn.
func isSegmentName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// segmentLess orders segment names by their number ("" first).
func segmentLess(a, b string) bool {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// sigtermCase stops the caught-up server with SIGTERM, expects exit status
// 0, restarts it and expects the same counters.
func (d *drillRun) sigtermCase(ctx context.Context) (string, error) {
	if err := d.ensureRunning(ctx); err != nil {
		return "", err
	}
	before, err := waitLagZero(ctx, d.client, d.base, d.cfg.Timeout)
	if err != nil {
		return "", err
	}
	start := time.Now()
	code, err := d.srv.terminate(d.cfg.Timeout)
	if err != nil {
		return "", fmt.Errorf("sigterm: %w", err)
	}
	if code != 0 {
		return "", fmt.Errorf("exit status %d after SIGTERM, want 0 (see %s)", code, d.logFile.Name())
	}
	stopped := time.Since(start)
	ready, err := d.start(ctx)
	if err != nil {
		return "", fmt.Errorf("restart after SIGTERM: %w", err)
	}
	after, err := waitLagZero(ctx, d.client, d.base, d.cfg.Timeout)
	if err != nil {
		return "", err
	}
	if diff := diffCounters(before, after); diff != "" {
		return "", fmt.Errorf("counters changed across SIGTERM and restart: %s", diff)
	}
	rep, err := d.verify(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("exit 0 in %s, ready in %s, counters unchanged; %s",
		stopped.Round(time.Millisecond), ready.Round(time.Millisecond), rep), nil
}

// diffCounters describes the differences of the durable counters.
func diffCounters(a, b statsResponse) string {
	var diffs []string
	add := func(name string, x, y uint64) {
		if x != y {
			diffs = append(diffs, fmt.Sprintf("%s %d -> %d", name, x, y))
		}
	}
	add("received", a.Received, b.Received)
	add("unique_processed", a.UniqueProcessed, b.UniqueProcessed)
	add("duplicate_dropped", a.DuplicateDropped, b.DuplicateDropped)
	add("wal.last_offset", a.WAL.LastOffset, b.WAL.LastOffset)
	add("wal.checkpoint", a.WAL.Checkpoint, b.WAL.Checkpoint)
	if !maps.Equal(a.TopicCounts, b.TopicCounts) {
		diffs = append(diffs, fmt.Sprintf("topic_counts %v -> %v", a.TopicCounts, b.TopicCounts))
	}
	if !slices.Equal(a.Topics, b.Topics) {
		diffs = append(diffs, fmt.Sprintf("topics %v -> %v", a.Topics, b.Topics))
	}
	return strings.Join(diffs, ", ")
}

func runDrill(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen drill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg drillConfig
	var format string
	genFlags(fs, &cfg.Gen, 20000, 50, &format)
	fs.StringVar(&cfg.Server, "server", "", "aggregator binary (default: go build the -build package)")
	fs.StringVar(&cfg.BuildPkg, "build", "./cmd/aggregator", "package built when -server is not given")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "fresh data directory (default: a temporary one)")
	fs.IntVar(&cfg.Cycles, "cycles", 5, "kill -9 cycles")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent publishers")
	fs.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "bound of every wait (ready, lag 0, a publish round)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (data, server.log, acklog) even when all passed")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if cfg.Cycles < 1 || cfg.Cycles > 1000 {
		fmt.Fprintln(stderr, "loadgen: cycles must be in [1, 1000]")
		return exitUsage
	}
	cfg.Gen.Format = resolveFormat(format, cfg.Gen.Batch)
	cfg.Out = stdout
	res, err := drill(ctx, cfg)
	if res.WorkDir != "" {
		fmt.Fprintf(stdout, "drill: work dir kept: %s\n", res.WorkDir)
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", res.Passed, res.Failed)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen: drill:", err)
		if errors.Is(err, errUsage) {
			return exitUsage
		}
		return exitFail
	}
	if res.Failed > 0 {
		return exitFail
	}
	return exitOK
}
