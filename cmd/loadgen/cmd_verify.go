package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// verifyCommand checks an acklog against GET /events and GET /stats. An
// acknowledged event missing, an event listed twice or counters that
// disagree are a failed check.
type verifyCommand struct {
	stdout, stderr io.Writer

	target   string
	ackPath  string // "": only duplicates and counters are checked
	pageSize int
	wait     time.Duration // for lag 0 before the listing (0: do not wait)
	timeout  time.Duration // bound on the whole listing
	jsonOut  bool
}

// Run verifies the service the flags in args name.
func (c *verifyCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen verify", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.target, "target", defaultTarget(), "base URL of the service (127.0.0.1 only)")
	fs.StringVar(&c.ackPath, "acklog", "", "acklog written by publish (without it only duplicates and counters are checked)")
	fs.IntVar(&c.pageSize, "page", 1000, "events per GET /events page")
	fs.DurationVar(&c.wait, "wait", 30*time.Second, "wait up to this long for consumer lag 0 first (0: do not wait)")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "bound on the whole listing")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as one JSON line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base, err := checkTarget(c.target)
	if err != nil {
		return &usageError{err: err}
	}
	acked := map[key]struct{}{}
	if c.ackPath != "" {
		if acked, err = readAckLogFile(c.ackPath); err != nil {
			return err
		}
	}
	client := newClient(1)
	defer client.CloseIdleConnections()
	rep, err := verify(ctx, client, verifyConfig{Base: base, Acked: acked, PageSize: c.pageSize, Wait: c.wait, Timeout: c.timeout})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if c.jsonOut {
		writeJSONLine(c.stdout, rep)
	} else {
		fmt.Fprintln(c.stdout, "verify:", rep)
	}
	if !rep.OK() {
		return errCheckFailed
	}
	return nil
}

// readAckLogFile reads the acklog at path.
func readAckLogFile(path string) (map[key]struct{}, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	acked, _, err := readAckLog(f)
	return acked, err
}
