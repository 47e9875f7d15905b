// Command aggregator is the crash-safe HTTP event aggregator: publishers POST
// JSON events, which are fsynced in a write-ahead log before the reply, and a
// consumer deduplicates them exactly once into an index served by GET /events.
//
// Usage:
//
//	aggregator --addr 127.0.0.1:8080 --data-dir ./data
//
// Every flag falls back to an AGG_* environment variable; see --help.
// SIGINT or SIGTERM shut it down cleanly (exit status 0).
//
// The offline tools of the data lifecycle run as subcommands on a data
// directory that no server holds:
//
//	aggregator check --data-dir ./data           log, index and between them, read-only
//	aggregator compact --data-dir ./data         index.db without its free pages
//	aggregator restore --from FILE --data-dir D  a new data directory from a backup
//	aggregator rebuild-index --data-dir ./data   index.db again from a log that starts at offset 1
//	aggregator upgrade-index --data-dir ./data   convert an index.db of format 2
//
// "aggregator help" lists them with their exit statuses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run runs the command line: a subcommand when args[0] names one (it does
// not start with a dash), else the server, with its flags, until SIGINT or
// SIGTERM. It returns the exit status. --help and --version print to stdout
// and exit 0.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runCommand(ctx, args, stdout, stderr, getenv)
	}
	cfg, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersion) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "aggregator:", err)
		fmt.Fprintln(stderr, "aggregator --help lists the flags")
		return 2
	}
	logger := newLogger(cfg, stderr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := NewServer(cfg, logger).Run(ctx); err != nil {
		logger.Error("aggregator failed", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
