package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// drillCommand runs the crash drill on the real binary. A failed case, or a
// drill that could not be set up or was interrupted, is a failed check.
type drillCommand struct {
	stdout, stderr io.Writer

	cfg    drillConfig
	format string // -format: object, array, ndjson or auto
}

// Run runs the drill the flags in args describe and prints one line per
// case, then the counts.
func (c *drillCommand) Run(ctx context.Context, args []string) error {
	if err := c.parseArgs(args); err != nil {
		return err
	}
	res, err := drill(ctx, c.cfg)
	if res.WorkDir != "" {
		fmt.Fprintf(c.stdout, "drill: work dir kept: %s\n", res.WorkDir)
	}
	fmt.Fprintf(c.stdout, "%d passed, %d failed\n", res.Passed, res.Failed)
	switch {
	case errors.Is(err, errBadDrillConfig):
		return &usageError{err: fmt.Errorf("drill: %w", err)}
	case err != nil:
		return checkFailed(fmt.Errorf("drill: %w", err))
	case res.Failed > 0:
		return errCheckFailed
	}
	return nil
}

// parseArgs sets c.cfg from the flags in args and checks them.
func (c *drillCommand) parseArgs(args []string) error {
	fs := flag.NewFlagSet("loadgen drill", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	cfg := &c.cfg
	genFlags(fs, &cfg.Gen, 20000, 50, &c.format)
	fs.StringVar(&cfg.Server, "server", "", "aggregator binary (default: go build the -build package)")
	fs.StringVar(&cfg.BuildPkg, "build", "./cmd/aggregator", "package built when -server is not given")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "fresh data directory (default: a temporary one)")
	fs.IntVar(&cfg.Cycles, "cycles", 5, "kill -9 cycles")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent publishers")
	fs.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "bound of every wait (ready, lag 0, a publish round)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (data, server.log, acklog) even when all passed")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cfg.Cycles < 1 || cfg.Cycles > 1000 {
		return usagef("cycles must be in [1, 1000]")
	}
	cfg.Gen.Format = resolveFormat(c.format, cfg.Gen.Batch)
	cfg.Out = c.stdout
	return nil
}
