package main

import (
	"context"
	"errors"
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

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/wal"
)

// errBadDrillConfig is returned, wrapped, by drill for a configuration it
// cannot run: events it cannot generate, or a data dir that is not empty.
var errBadDrillConfig = errors.New("bad drill configuration")

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
	expected int            // unique events published over all cases so far; -1 once a case failed midway
	follow   *drillFollower // follows the feed through every case
}

// drill runs the crash drill: Cycles of publish + kill -9 at a random moment
// + restart + catch-up + verify, then two torn tails (a cut record; garbage
// and a cut record), then SIGTERM, then one more kill -9 cycle, while a
// follower reads the feed throughout; its check is the last case. An error
// is returned only when the drill could not be set up.
func drill(ctx context.Context, cfg drillConfig) (res drillResult, err error) {
	cfg.setDefaults()
	cfg.Gen.RunID = "probe"
	if err := cfg.Gen.validate(); err != nil {
		return res, fmt.Errorf("%w: %v", errBadDrillConfig, err)
	}
	d := &drillRun{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Gen.Seed, 0x5eed))}
	if d.workDir, err = makeWorkDir(cfg.WorkDir); err != nil {
		return res, err
	}
	keep := cfg.Keep || cfg.WorkDir != "" // a work directory the caller chose is always kept
	res.WorkDir = d.workDir
	defer func() {
		d.shutdown()
		if err == nil && res.Failed == 0 && !keep {
			_ = os.RemoveAll(d.workDir)
			res.WorkDir = ""
		}
	}()
	if err := d.setup(ctx); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Out, "drill: seed %d, server %s on %s, data %s, log %s\n",
		cfg.Gen.Seed, d.bin, d.addr, d.dataDir, d.logFile.Name())
	for _, c := range d.cases() {
		if ctx.Err() != nil {
			break
		}
		detail, err := c.run(ctx)
		res.record(cfg.Out, c.name, detail, err)
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("drill interrupted: %w", ctx.Err())
	}
	return res, nil
}

// setDefaults fills in the defaults of the fields left zero.
func (cfg *drillConfig) setDefaults() {
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
}

// makeWorkDir returns dir, or a new temporary directory if dir is "".
func makeWorkDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	dir, err := os.MkdirTemp("", "aggregator-drill-")
	if err != nil {
		return "", fmt.Errorf("work dir: %w", err)
	}
	return dir, nil
}

// drillCase is one case of the drill: run returns a description of what
// happened, or why the case failed.
type drillCase struct {
	name string
	run  func(ctx context.Context) (detail string, err error)
}

// cases returns the cases of the drill in the order they run.
func (d *drillRun) cases() []drillCase {
	events := d.cfg.Gen.Events
	var cases []drillCase
	for k := 1; k <= d.cfg.Cycles; k++ {
		cases = append(cases, drillCase{fmt.Sprintf("cycle %d/%d", k, d.cfg.Cycles), func(ctx context.Context) (string, error) {
			return d.crashCase(ctx, fmt.Sprintf("c%d", k), events, nil)
		}})
	}
	for i, garbage := range []bool{false, true} {
		name := "torn tail (cut record)"
		if garbage {
			name = "torn tail (garbage + cut record)"
		}
		tear := func() (string, error) { return d.tearTail(garbage) }
		cases = append(cases, drillCase{name, func(ctx context.Context) (string, error) {
			return d.crashCase(ctx, fmt.Sprintf("torn%d", i+1), max(events/2, 1), tear)
		}})
	}
	cases = append(cases, drillCase{"sigterm", d.sigtermCase})
	// A crash after a clean restart: state a clean shutdown leaves behind
	// (a filter snapshot, say) must not survive into a crashed run.
	cases = append(cases, drillCase{"kill -9 after clean restart", func(ctx context.Context) (string, error) {
		return d.crashCase(ctx, "after-sigterm", events, nil)
	}})
	cases = append(cases, drillCase{"follower", d.followerCase})
	return cases
}

// record counts a case and prints its line on out.
func (res *drillResult) record(out io.Writer, name, detail string, err error) {
	if err != nil {
		res.Failed++
		fmt.Fprintf(out, "%s: FAIL: %v\n", name, err)
		return
	}
	res.Passed++
	fmt.Fprintf(out, "%s: ok: %s\n", name, detail)
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
		return fmt.Errorf("%w: data dir %s is not empty (the drill needs a fresh one)", errBadDrillConfig, d.dataDir)
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
	d.startFollower(ctx)
	return nil
}

// shutdown stops the server with SIGTERM if it runs and releases what the
// drill holds: its connections, the acklog (flushed) and the server log.
func (d *drillRun) shutdown() {
	if d.follow != nil {
		_ = d.follow.stop()
	}
	if d.srv != nil && !d.srv.hasExited() {
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
	if d.srv != nil && !d.srv.hasExited() {
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
	pb, err := d.casePublisher(name, n)
	if err != nil {
		return "", err
	}
	// Until every request is acknowledged, how many of these events the
	// service holds is unknown; a failure below leaves it unknown.
	expectedBefore := d.expected
	d.expected = -1

	acked, detail := d.publishUntilKill(ctx, pb)
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

	resent := d.resendUnacked(ctx, pb, acked)
	if missing := len(acked) - countTrue(acked); missing > 0 {
		return "", fmt.Errorf("%d requests still not acknowledged after 3 retry rounds: %s", missing, detail)
	}
	if expectedBefore >= 0 {
		d.expected = expectedBefore + pb.plan.unique
	}
	rep, err := d.verify(ctx)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, detail)
	}
	return detail + fmt.Sprintf("; resent %d requests; %s", resent, rep), nil
}

// casePublisher returns the publisher of n events of the crash case name,
// with a seed of its own drawn from the drill's.
func (d *drillRun) casePublisher(name string, n int) (*publisher, error) {
	g := d.cfg.Gen
	g.Events = n
	g.RunID = fmt.Sprintf("drill%d-%s", g.Seed%1000000, name)
	g.Seed = d.rng.Uint64()
	p, err := buildPlan(g)
	if err != nil {
		return nil, err
	}
	return &publisher{client: d.client, base: d.base, raw: true, plan: p, concurrency: d.cfg.Concurrency, acks: d.acks}, nil
}

// publishUntilKill publishes pb's plan and kills the server with SIGKILL
// once a random share (10% to 90%) of its events is acknowledged, the run
// has ended, or the timeout has passed. It returns which requests were
// acknowledged and a description of the kill.
func (d *drillRun) publishUntilKill(ctx context.Context, pb *publisher) ([]bool, string) {
	share := 0.1 + 0.8*d.rng.Float64()
	killAfter := int64(share * float64(pb.plan.events))
	pubCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runResult := make(chan *publishResult, 1)
	start := time.Now()
	go func() { runResult <- pb.run(pubCtx, nil, d.cfg.Timeout) }() // joined below
	res := waitForAcks(pb, killAfter, runResult, d.cfg.Timeout)
	d.srv.kill()
	killedAt := time.Since(start)
	ackedAtKill := pb.ackedEvents.Load()
	cancel()
	if res == nil {
		res = <-runResult
	}
	return res.Acked, fmt.Sprintf("killed at %s with %d/%d events acked",
		killedAt.Round(time.Millisecond), ackedAtKill, pb.plan.events)
}

// waitForAcks waits until pb has acknowledgements for n events, its run
// ends (and returns the result that came on runResult), or timeout passes.
func waitForAcks(pb *publisher, n int64, runResult <-chan *publishResult, timeout time.Duration) *publishResult {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for pb.ackedEvents.Load() < n {
		select {
		case res := <-runResult:
			return res
		case <-deadline.C:
			return nil
		case <-tick.C:
		}
	}
	return nil
}

// resendUnacked resends the requests acked does not mark, in up to three
// rounds, and marks those acknowledged. It returns how many it sent.
func (d *drillRun) resendUnacked(ctx context.Context, pb *publisher, acked []bool) int {
	resent := 0
	for range 3 {
		var unacked []int
		for i, ok := range acked {
			if !ok {
				unacked = append(unacked, i)
			}
		}
		if len(unacked) == 0 {
			break
		}
		resent += len(unacked)
		r := pb.run(ctx, unacked, d.cfg.Timeout)
		for i, ok := range r.Acked {
			acked[i] = acked[i] || ok
		}
	}
	return resent
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
	segs, err := wal.Segments(walDir)
	if err != nil {
		return "", fmt.Errorf("list segments: %w", err)
	}
	if len(segs) == 0 {
		return "", fmt.Errorf("no segment file in %s", walDir)
	}
	path := segs[len(segs)-1].Path
	newest := filepath.Base(path)
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
func diffCounters(a, b api.StatsReply) string {
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
