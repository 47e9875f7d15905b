package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/internal/powerfs"
)

// powerlossCommand runs the power-loss drill: the crash drill with the data
// directory on powerfs, whose power is cut at each kill -9. A failed cycle,
// or a drill that could not be set up or was interrupted, is a failed check.
type powerlossCommand struct {
	stdout, stderr io.Writer

	cfg     powerConfig
	format  string
	modes   string
	segment int
}

// Run runs the drill the flags in args describe.
func (c *powerlossCommand) Run(ctx context.Context, args []string) error {
	if err := c.parseArgs(args); err != nil {
		return err
	}
	if err := powerfs.Available(); err != nil {
		return &usageError{err: fmt.Errorf("powerloss needs a FUSE mount (root and /dev/fuse): %w", err)}
	}
	res, err := powerDrill(ctx, c.cfg)
	if res.WorkDir != "" {
		fmt.Fprintf(c.stdout, "powerloss: work dir kept: %s\n", res.WorkDir)
	}
	fmt.Fprintf(c.stdout, "%d passed, %d failed\n", res.Passed, res.Failed)
	switch {
	case errors.Is(err, errBadDrillConfig):
		return &usageError{err: fmt.Errorf("powerloss: %w", err)}
	case err != nil:
		return checkFailed(fmt.Errorf("powerloss: %w", err))
	case res.Failed > 0:
		return errCheckFailed
	}
	return nil
}

// parseArgs sets c.cfg from the flags in args and checks them.
func (c *powerlossCommand) parseArgs(args []string) error {
	fs := flag.NewFlagSet("loadgen powerloss", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	cfg := &c.cfg
	genFlags(fs, &cfg.Gen, 10000, 25, &c.format)
	fs.StringVar(&cfg.Server, "server", "", "aggregator binary (default: go build the -build package with -tags)")
	fs.StringVar(&cfg.BuildPkg, "build", "./cmd/aggregator", "package built when -server is not given")
	fs.StringVar(&cfg.Tags, "tags", "", "build tags (powerloss_nofsync builds a log that does not fsync: the drill must fail)")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "work directory (default: a temporary one, removed if all passed)")
	fs.IntVar(&cfg.Cycles, "cycles", 30, "kill -9 + power cut cycles per mode")
	fs.StringVar(&c.modes, "modes", "drop-all,torn", "comma-separated cut modes: drop-all, torn")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent publishers")
	fs.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "bound of every wait (ready, lag 0, a publish round)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the work directory even when all passed")
	fs.IntVar(&c.segment, "segment-size", 64<<10, "the server's --segment-size: small segments make the log create and remove files (directory entries) all the time")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.ServerArgs = []string{"--segment-size", strconv.Itoa(c.segment)}
	if cfg.Cycles < 1 || cfg.Cycles > 1000 {
		return usagef("cycles must be in [1, 1000]")
	}
	for _, s := range strings.Split(c.modes, ",") {
		m, err := powerfs.ParseMode(strings.TrimSpace(s))
		if err != nil {
			return &usageError{err: err}
		}
		cfg.Modes = append(cfg.Modes, m)
	}
	cfg.Gen.Format = resolveFormat(c.format, cfg.Gen.Batch)
	cfg.Out = c.stdout
	return nil
}
