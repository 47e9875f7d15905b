// Command loadgen is the Aggregator's publisher, verifier and crash drill.
//
//	loadgen publish [flags]   publish generated events to a running service
//	loadgen verify  [flags]   check that every acknowledged event is listed once
//	loadgen drill   [flags]   kill -9 / restart / verify cycles on the real binary
//	loadgen powerloss [flags] the same with the data on powerfs, its power cut at each kill (root, FUSE)
//	loadgen startup [flags]   time to ready and to lag 0, and RSS, on an existing data dir
//	loadgen consume [flags]   follow the feed: events/s delivered, publish-to-delivery latency
//
// It only talks to 127.0.0.1. Exit status: 0 on success, 1 when a check
// failed (a request not acknowledged, an acknowledged event missing, an event
// listed twice, counters that disagree, a failed drill case), 2 on a usage or
// operational error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Exit statuses, as the package doc describes them; exitStatus is the one
// place that chooses them.
const (
	exitOK    = 0 // success
	exitFail  = 1 // a check failed
	exitUsage = 2 // a usage or operational error
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	lg := &loadgen{stdout: stdout, stderr: stderr}
	return exitStatus(lg.Run(ctx, args), stderr)
}

const usage = `usage: loadgen <command> [flags]

commands:
  publish   publish generated events to a running aggregator
  verify    check an acklog against GET /events and GET /stats
  drill     crash drill: kill -9, restart and verify the real binary
  powerloss power-loss drill: the crash drill on powerfs (FUSE, root), the power cut at each kill
  startup   start the binary on an existing data dir: time to ready and to lag 0, RSS
  consume   follow GET /feed (long-poll, SSE or a named cursor): events/s and publish-to-delivery latency

run "loadgen <command> -h" for the flags of a command.
`

// loadgen is the program: Run hands a command line to the command it names.
type loadgen struct {
	stdout, stderr io.Writer
}

// Run runs the command args[0] with the flags args[1:].
func (lg *loadgen) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(lg.stderr, usage)
		return &usageError{err: errors.New("no command"), reported: true}
	}
	name, args := args[0], args[1:]
	switch name {
	case "publish":
		return (&publishCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "verify":
		return (&verifyCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "drill":
		return (&drillCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "powerloss":
		return (&powerlossCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "startup":
		return (&startupCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "consume":
		return (&consumeCommand{stdout: lg.stdout, stderr: lg.stderr}).Run(ctx, args)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(lg.stdout, usage)
		return nil
	default:
		fmt.Fprintf(lg.stderr, "loadgen: unknown command %q\n%s", name, usage)
		return &usageError{err: fmt.Errorf("unknown command %q", name), reported: true}
	}
}

// usageError is a command line that cannot be run: exit status 2.
// exitStatus prints it as "loadgen: <message>" unless it is reported.
type usageError struct {
	err error
	// reported means the problem is on stderr already, with the usage: the
	// flag package prints a flag it rejects (and answers -h) that way.
	reported bool
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error with the message format makes of a.
func usagef(format string, a ...any) error {
	return &usageError{err: fmt.Errorf(format, a...)}
}

// parseFlags parses args into fs; a flag error comes back as a reported
// usage error (exit status 2), since the flag package prints it with the
// flags of the command, and -h as flag.ErrHelp (exit status 0).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err: err, reported: true}
	}
	return nil
}

// errCheckFailed is returned, bare, when a command ran to its end and a
// check failed (exit status 1); the command's report says which. checkFailed
// wraps a reason the report does not give.
var errCheckFailed = errors.New("loadgen: a check failed")

// checkError is a failed check with a reason of its own, such as a server
// that never got ready; it matches errCheckFailed.
type checkError struct{ err error }

func (e *checkError) Error() string   { return e.err.Error() }
func (e *checkError) Unwrap() []error { return []error{e.err, errCheckFailed} }

// checkFailed marks err as a failed check: exit status 1.
func checkFailed(err error) error { return &checkError{err: err} }

// exitStatus returns the exit status for the error of a command and prints
// the error on stderr, unless it has been said already: by the command's
// report (a bare errCheckFailed) or with the usage (a reported usageError).
// Any other error is an operational one: exit status 2.
func exitStatus(err error, stderr io.Writer) int {
	var usageErr *usageError
	var checkErr *checkError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &checkErr):
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitFail
	case errors.Is(err, errCheckFailed):
		return exitFail
	case errors.As(err, &usageErr) && usageErr.reported:
		return exitUsage
	default:
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
}

func defaultTarget() string {
	if a := os.Getenv("AGG_ADDR"); a != "" {
		return "http://" + a
	}
	return "http://127.0.0.1:8080"
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
	fs.BoolVar(&g.Stamp, "stamp", false, "put the send time into each payload (sent_ns), for loadgen consume's publish-to-delivery latency")
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

// writeJSONLine prints v as one line of JSON.
func writeJSONLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintln(w, string(b))
}
