package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
)

// publishCommand publishes generated events to a running service and prints
// a summary. A request that is not acknowledged is a failed check.
type publishCommand struct {
	stdout, stderr io.Writer

	gen           genConfig
	format        string // -format: object, array, ndjson or auto
	target        string
	path          string  // request target (/publish with a query, if any)
	rate          float64 // events per second to send at (0: as fast as possible)
	concurrency   int
	runID         string
	duration      time.Duration // no request starts after it
	ackPath       string
	jsonOut       bool
	progressEvery time.Duration
	httpClient    string // raw or std
	cpuProfile    string
	lagEvery      time.Duration // 0: no lag sampling

	base string // target, checked
}

// Run publishes the events the flags in args describe.
func (c *publishCommand) Run(ctx context.Context, args []string) error {
	if err := c.parseArgs(args); err != nil {
		return err
	}
	p, err := c.buildPlan()
	if err != nil {
		return err
	}
	var acks *ackLog
	if c.ackPath != "" {
		f, err := os.OpenFile(c.ackPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open acklog: %w", err)
		}
		defer f.Close()
		acks = newAckLog(f)
	}
	client := newClient(c.concurrency)
	defer client.CloseIdleConnections()
	pb := &publisher{client: client, base: c.base, path: c.path, raw: c.httpClient == "raw", plan: p,
		concurrency: c.concurrency, acks: acks, rate: c.rate}
	statsClient := newClient(1)
	defer statsClient.CloseIdleConnections()
	var lag *lagProbe
	if c.lagEvery > 0 {
		if lag, err = startLagProbe(ctx, statsClient, c.base, c.lagEvery); err != nil {
			return err
		}
		defer lag.Stop()
	}
	res, sum, err := c.publish(ctx, pb, lag)
	if err != nil {
		return err
	}
	if acks != nil {
		if err := acks.Flush(); err != nil {
			return err
		}
	}
	if c.jsonOut {
		writeJSONLine(c.stdout, sum)
	} else {
		sum.writeText(c.stdout)
	}
	if res.FirstError != "" {
		fmt.Fprintln(c.stderr, "loadgen: first error:", res.FirstError)
	}
	if res.EventsAcked != p.events {
		return errCheckFailed
	}
	return nil
}

// parseArgs sets the fields of c from the flags in args and checks them.
func (c *publishCommand) parseArgs(args []string) error {
	fs := flag.NewFlagSet("loadgen publish", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	genFlags(fs, &c.gen, 100000, 100, &c.format)
	fs.StringVar(&c.target, "target", defaultTarget(), "base URL of the service (127.0.0.1 only)")
	fs.StringVar(&c.path, "path", "/publish", "request target, with a query if wanted (e.g. /publish?wait=applied)")
	fs.Float64Var(&c.rate, "rate", 0, "events per second to send at, paced per request (0: as fast as the service answers)")
	fs.IntVar(&c.concurrency, "concurrency", 16, "concurrent publishers (one keep-alive connection each)")
	fs.StringVar(&c.runID, "run-id", "", "prefix that makes event ids unique per run (default random)")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "time cap: no request starts after it")
	fs.StringVar(&c.ackPath, "acklog", "", "append every acknowledged topic<TAB>event_id to this file")
	fs.BoolVar(&c.jsonOut, "json", false, "print the summary as one JSON line")
	fs.DurationVar(&c.progressEvery, "progress-interval", 5*time.Second, "interval of progress lines when stderr is not a terminal")
	fs.StringVar(&c.httpClient, "http-client", "raw", "raw: one lean keep-alive HTTP/1.1 connection per publisher; std: net/http Transport")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the loadgen itself during the run to this file")
	fs.DurationVar(&c.lagEvery, "lag-interval", 0, "sample the consumer lag (GET /stats) this often and wait for lag 0 at the end (0: off)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if c.base, err = checkTarget(c.target); err != nil {
		return &usageError{err: err}
	}
	switch {
	case c.concurrency < 1 || c.concurrency > 4096:
		return usagef("concurrency must be in [1, 4096]")
	case c.httpClient != "raw" && c.httpClient != "std":
		return usagef("http-client must be raw or std")
	case c.duration <= 0 || c.progressEvery <= 0:
		return usagef("duration and progress-interval must be positive")
	case c.rate < 0:
		return usagef("rate must not be negative")
	case !strings.HasPrefix(c.path, "/publish"):
		return usagef("path must start with /publish")
	}
	c.gen.RunID = c.runID
	if c.gen.RunID == "" {
		c.gen.RunID = randomRunID()
	}
	c.gen.Format = resolveFormat(c.format, c.gen.Batch)
	return nil
}

// buildPlan builds every request body before the clock starts, and says on
// stderr what the run will send.
func (c *publishCommand) buildPlan() (*plan, error) {
	start := time.Now()
	p, err := buildPlan(c.gen)
	if err != nil {
		return nil, &usageError{err: err}
	}
	var bodyBytes int
	for i := range p.requests {
		bodyBytes += len(p.requests[i].body)
	}
	fmt.Fprintf(c.stderr, "loadgen: run %s: %d events (%d unique, %d duplicates) in %d requests of %d (%s, %.1f MB) built in %s\n",
		c.gen.RunID, p.events, p.unique, p.duplicates, len(p.requests), c.gen.Batch, c.gen.Format,
		float64(bodyBytes)/1e6, time.Since(start).Round(time.Millisecond))
	return p, nil
}

// publish runs pb, showing its progress on stderr, with the CPU profile
// asked for and, if lag is not nil, the consumer lag sampled during the run
// and its drain to lag 0 after it. It returns the result and its summary.
func (c *publishCommand) publish(ctx context.Context, pb *publisher, lag *lagProbe) (*publishResult, summary, error) {
	progress := startProgress(c.stderr, isTerminal(c.stderr), c.progressEvery, pb, pb.plan.events)
	defer progress.Stop()
	stopProfile, err := startCPUProfile(c.cpuProfile)
	if err != nil {
		return nil, summary{}, err
	}
	runStart := time.Now()
	cpuStart := processCPU()
	res := pb.run(ctx, nil, c.duration)
	cpu := processCPU() - cpuStart
	stopProfile()
	progress.Stop()
	sum := newSummary(c.gen, c.concurrency, pb.plan, res)
	sum.ClientCPUS = cpu.Seconds()
	if lag != nil {
		sum.Lag = lag.drain(ctx, runStart)
	}
	return res, sum, nil
}

// startCPUProfile starts writing a CPU profile of this process to path
// ("": none) and returns the function that stops it.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// randomRunID returns 8 random hex characters.
func randomRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// processCPU returns the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
