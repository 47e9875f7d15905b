// Command loadgen is the Aggregator's publisher, verifier and crash drill.
//
//	loadgen publish [flags]   publish generated events to a running service
//	loadgen verify  [flags]   check that every acknowledged event is listed once
//	loadgen drill   [flags]   kill -9 / restart / verify cycles on the real binary
//	loadgen powerloss [flags] the same with the data on powerfs, its power cut at each kill (root, FUSE)
//	loadgen startup [flags]   time to ready and to lag 0, and RSS, on an existing data dir
//
// It only talks to 127.0.0.1. Exit status: 0 on success, 1 when a check
// failed (a request not acknowledged, an acknowledged event missing, an event
// listed twice, counters that disagree, a failed drill case), 2 on a usage or
// operational error.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"golang.org/x/term"
)

const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: loadgen <command> [flags]

commands:
  publish   publish generated events to a running aggregator
  verify    check an acklog against GET /events and GET /stats
  drill     crash drill: kill -9, restart and verify the real binary
  powerloss power-loss drill: the crash drill on powerfs (FUSE, root), the power cut at each kill
  startup   start the binary on an existing data dir: time to ready and to lag 0, RSS

run "loadgen <command> -h" for the flags of a command.
`

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "publish":
		return runPublish(ctx, args[1:], stdout, stderr)
	case "verify":
		return runVerify(ctx, args[1:], stdout, stderr)
	case "drill":
		return runDrill(ctx, args[1:], stdout, stderr)
	case "powerloss":
		return runPowerLoss(ctx, args[1:], stdout, stderr)
	case "startup":
		return runStartup(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "loadgen: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
}

func defaultTarget() string {
	if a := os.Getenv("AGG_ADDR"); a != "" {
		return "http://" + a
	}
	return "http://127.0.0.1:8080"
}

// randomRunID returns 8 random hex characters.
func randomRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// genFlags registers the event generation flags on fs.
func genFlags(fs *flag.FlagSet, g *genConfig, events, batch int, format *string) {
	fs.IntVar(&g.Events, "events", events, "total events to send, duplicates included")
	fs.IntVar(&g.Batch, "batch", batch, "events per request")
	fs.StringVar(format, "format", "auto", "request body: object (batch 1), array, ndjson, or auto (object for batch 1, else array)")
	fs.IntVar(&g.PayloadSize, "payload", 256, "bytes of each event's payload object")
	fs.Float64Var(&g.DupFraction, "dup", 0.2, "fraction of events that repeat an event of an earlier request, in [0,1)")
	fs.IntVar(&g.Topics, "topics", 4, "number of topics")
	fs.BoolVar(&g.SameRequest, "dup-same-request", false, "let duplicates repeat an event of their own request (one-request stress batches)")
	fs.Uint64Var(&g.Seed, "seed", uint64(time.Now().UnixNano()), "random seed (which events repeat, drill kill moments)")
}

func resolveFormat(format string, batch int) string {
	if format == "auto" {
		if batch == 1 {
			return formatObject
		}
		return formatArray
	}
	return format
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

func runPublish(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var g genConfig
	var format string
	genFlags(fs, &g, 100000, 100, &format)
	target := fs.String("target", defaultTarget(), "base URL of the service (127.0.0.1 only)")
	conc := fs.Int("concurrency", 16, "concurrent publishers (one keep-alive connection each)")
	runID := fs.String("run-id", "", "prefix that makes event ids unique per run (default random)")
	maxDur := fs.Duration("duration", 10*time.Minute, "time cap: no request starts after it")
	ackPath := fs.String("acklog", "", "append every acknowledged topic<TAB>event_id to this file")
	jsonOut := fs.Bool("json", false, "print the summary as one JSON line")
	every := fs.Duration("progress-interval", 5*time.Second, "interval of progress lines when stderr is not a terminal")
	httpClient := fs.String("http-client", "raw", "raw: one lean keep-alive HTTP/1.1 connection per publisher; std: net/http Transport")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the loadgen itself during the run to this file")
	lagEvery := fs.Duration("lag-interval", 0, "sample the consumer lag (GET /stats) this often and wait for lag 0 at the end (0: off)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	base, err := checkTarget(*target)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
	if *conc < 1 || *conc > 4096 {
		fmt.Fprintln(stderr, "loadgen: concurrency must be in [1, 4096]")
		return exitUsage
	}
	if *httpClient != "raw" && *httpClient != "std" {
		fmt.Fprintln(stderr, "loadgen: http-client must be raw or std")
		return exitUsage
	}
	if *maxDur <= 0 || *every <= 0 {
		fmt.Fprintln(stderr, "loadgen: duration and progress-interval must be positive")
		return exitUsage
	}
	g.RunID = *runID
	if g.RunID == "" {
		g.RunID = randomRunID()
	}
	g.Format = resolveFormat(format, g.Batch)

	buildStart := time.Now()
	p, err := buildPlan(g)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
	var bodyBytes int
	for i := range p.requests {
		bodyBytes += len(p.requests[i].body)
	}
	fmt.Fprintf(stderr, "loadgen: run %s: %d events (%d unique, %d duplicates) in %d requests of %d (%s, %.1f MB) built in %s\n",
		g.RunID, p.events, p.unique, p.duplicates, len(p.requests), g.Batch, g.Format,
		float64(bodyBytes)/1e6, time.Since(buildStart).Round(time.Millisecond))

	var acks *ackLog
	if *ackPath != "" {
		f, err := os.OpenFile(*ackPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(stderr, "loadgen: open acklog:", err)
			return exitUsage
		}
		defer f.Close()
		acks = newAckLog(f)
	}
	client := newClient(*conc)
	defer client.CloseIdleConnections()
	pb := &publisher{client: client, base: base, raw: *httpClient == "raw", plan: p, concurrency: *conc, acks: acks}
	var lw *lagWatch
	var before statsResponse
	statsClient := newClient(1)
	defer statsClient.CloseIdleConnections()
	if *lagEvery > 0 {
		if before, err = getStats(ctx, statsClient, base); err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
		lw = startLagWatch(statsClient, base, *lagEvery)
	}
	prog := startProgress(stderr, isTerminal(stderr), *every, pb, p.events)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
	}
	runStart := time.Now()
	cpuStart := processCPU()
	res := pb.run(ctx, nil, *maxDur)
	cpu := processCPU() - cpuStart
	if *cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	prog.Stop()
	var lag *lagReport
	if lw != nil {
		lw.Stop()
		r := lw.report()
		r.DrainS = -1
		drainStart := time.Now()
		if after, err := waitLagZero(ctx, statsClient, base, time.Minute); err == nil {
			r.DrainS = time.Since(drainStart).Seconds()
			applied := (after.UniqueProcessed + after.DuplicateDropped) - (before.UniqueProcessed + before.DuplicateDropped)
			r.Processed = float64(applied) / time.Since(runStart).Seconds()
		}
		lag = &r
	}
	if acks != nil {
		if err := acks.Flush(); err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
	}
	sum := newSummary(g, *conc, p, res)
	sum.Lag = lag
	sum.ClientCPUS = cpu.Seconds()
	if *jsonOut {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
	} else {
		sum.print(stdout)
	}
	if res.FirstError != "" {
		fmt.Fprintln(stderr, "loadgen: first error:", res.FirstError)
	}
	if res.EventsAcked != p.events {
		return exitFail
	}
	return exitOK
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", defaultTarget(), "base URL of the service (127.0.0.1 only)")
	ackPath := fs.String("acklog", "", "acklog written by publish (without it only duplicates and counters are checked)")
	page := fs.Int("page", 1000, "events per GET /events page")
	wait := fs.Duration("wait", 30*time.Second, "wait up to this long for consumer lag 0 first (0: do not wait)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on the whole listing")
	jsonOut := fs.Bool("json", false, "print the report as one JSON line")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	base, err := checkTarget(*target)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
	acked := map[key]struct{}{}
	if *ackPath != "" {
		f, err := os.Open(*ackPath)
		if err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
		acked, _, err = readAckLog(f)
		f.Close()
		if err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitUsage
		}
	}
	client := newClient(1)
	defer client.CloseIdleConnections()
	rep, err := verify(ctx, client, verifyConfig{Base: base, Acked: acked, PageSize: *page, Wait: *wait, Timeout: *timeout})
	if err != nil {
		fmt.Fprintln(stderr, "loadgen: verify:", err)
		return exitUsage
	}
	if *jsonOut {
		b, _ := json.Marshal(rep)
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintln(stdout, "verify:", rep)
	}
	if !rep.OK() {
		return exitFail
	}
	return exitOK
}

// errUsage marks flag errors of the drill.
var errUsage = errors.New("loadgen: usage")
