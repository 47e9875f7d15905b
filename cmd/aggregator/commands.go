package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aggregator-dev/aggregator/wal"
)

// The offline tools: `aggregator <command> [flags]` runs one of them on a
// data directory; a plain `aggregator [flags]` is the server (main.go).

const commandsUsage = `usage: aggregator [flags]             run the server (aggregator --help lists its flags)
       aggregator <command> [flags]   an offline tool on a data directory

commands:
  check          check a data directory, read-only: the log's records, the index, and between them
  compact        rewrite index.db without its free pages (bbolt keeps the file's size otherwise)
  restore        make a new data directory from a backup taken with GET /admin/backup
  rebuild-index  rebuild index.db from the log, which must start at offset 1 (--wal-retain-bytes -1)
  upgrade-index  convert an index.db of format 2 (the previous release) to this release's format

run "aggregator <command> -h" for the flags of a command. Each takes --data-dir
(default $AGG_DATA_DIR, else ./data) and refuses a directory a server holds.
Exit status: 0 done (check: no damage), 1 failed (check: damage found),
2 usage error, or the data directory is missing or in use (nothing done).
`

// command is one offline tool; Run gets the arguments after its name.
type command interface {
	Run(ctx context.Context, args []string) error
}

// newCommand returns the command called name, nil for none.
func newCommand(name string, stdout, stderr io.Writer, getenv func(string) string) command {
	base := commandBase{stdout: stdout, stderr: stderr, getenv: getenv}
	switch name {
	case "check":
		return &checkCommand{commandBase: base}
	case "compact":
		return &compactCommand{commandBase: base}
	case "restore":
		return &restoreCommand{commandBase: base}
	case "rebuild-index":
		return &rebuildCommand{commandBase: base}
	case "upgrade-index":
		return &upgradeCommand{commandBase: base}
	}
	return nil
}

// runCommand runs the command line args (args[0] names the command) and
// returns the exit status.
func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	name := args[0]
	if name == "help" {
		fmt.Fprint(stdout, commandsUsage)
		return 0
	}
	cmd := newCommand(name, stdout, stderr, getenv)
	if cmd == nil {
		fmt.Fprintf(stderr, "aggregator: unknown command %q\n\n%s", name, commandsUsage)
		return exitUsage
	}
	return exitStatus(name, cmd.Run(ctx, args[1:]), stderr)
}

// Exit statuses of the commands; exitStatus is the one place that chooses.
const (
	exitOK     = 0
	exitFailed = 1 // the command failed, or check found damage
	exitUsage  = 2 // a usage error, or nothing was done: the data directory is missing or in use
)

// errDamage is returned by check when it found damage; its report said
// what and where.
var errDamage = errors.New("damage found")

// usageError is a command line that cannot be run. reported: the flag
// package printed it already, with the flags.
type usageError struct {
	err      error
	reported bool
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// notRunError is a command that did nothing because its data directory is
// missing or in use.
type notRunError struct{ err error }

func (e *notRunError) Error() string { return e.err.Error() }
func (e *notRunError) Unwrap() error { return e.err }

// exitStatus prints err (unless said already) and returns the exit status.
func exitStatus(name string, err error, stderr io.Writer) int {
	var ue *usageError
	var nr *notRunError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errDamage):
		return exitFailed // the report said what
	case errors.As(err, &ue):
		if !ue.reported {
			fmt.Fprintf(stderr, "aggregator %s: %v\n", name, err)
		}
		return exitUsage
	case errors.As(err, &nr):
		fmt.Fprintf(stderr, "aggregator %s: %v\n", name, err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "aggregator %s: %v\n", name, err)
		return exitFailed
	}
}

// commandBase is what every command has: its outputs, the environment and
// the --data-dir flag.
type commandBase struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	dataDir        string
}

// flags returns the flag set of the command name with --data-dir on it.
func (c *commandBase) flags(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("aggregator "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	def := "./data"
	if c.getenv != nil && c.getenv("AGG_DATA_DIR") != "" {
		def = c.getenv("AGG_DATA_DIR")
	}
	fs.StringVar(&c.dataDir, "data-dir", def, "data directory [$AGG_DATA_DIR]")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: aggregator %s [flags]\n\n%s\n\nflags:\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args into fs; a flag error is a reported usage error, and
// no positional argument is taken.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err: err, reported: true}
	}
	if fs.NArg() > 0 {
		return &usageError{err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// heldDir is an offline tool's hold on a data directory: the log's lock,
// so that no server runs on it meanwhile (a server takes that lock before
// it opens the index).
type heldDir struct {
	path string
	lock io.Closer
}

// holdDataDir takes the data directory dir for an offline tool: a missing
// directory or one a server holds is a notRunError.
func holdDataDir(dir string) (*heldDir, error) {
	if _, err := os.Stat(filepath.Join(dir, "wal")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &notRunError{fmt.Errorf("%s is not a data directory (no wal/ in it)", dir)}
		}
		return nil, &notRunError{err}
	}
	lock, err := wal.LockDir(filepath.Join(dir, "wal"))
	if errors.Is(err, wal.ErrLocked) {
		return nil, &notRunError{fmt.Errorf("data directory %s is in use by a running aggregator: stop it first", dir)}
	}
	if err != nil {
		return nil, &notRunError{err}
	}
	return &heldDir{path: dir, lock: lock}, nil
}

func (d *heldDir) index() string { return filepath.Join(d.path, "index.db") }

func (d *heldDir) close() { d.lock.Close() }

// tempIndex returns the path of a new index file next to index.db for the
// tool called what, removing one an interrupted earlier run left.
func (d *heldDir) tempIndex(what string) (string, error) {
	p := filepath.Join(d.path, "index.db."+what)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return p, nil
}

// swapIn makes the complete, closed index file tmp the data directory's
// index.db, atomically: tmp is fsynced, then renamed over index.db, then
// the directory is fsynced. A crash leaves either the old index.db or the
// new one. When keep is not empty and there is an old index.db, it stays
// as index.db.<keep>.<unix time> (a hard link made first); the path is
// returned.
func (d *heldDir) swapIn(tmp, keep string) (kept string, err error) {
	if err := syncFile(tmp); err != nil {
		return "", err
	}
	if keep != "" {
		kept = fmt.Sprintf("%s.%s.%s", d.index(), keep, strconv.FormatInt(time.Now().Unix(), 10))
		switch err := os.Link(d.index(), kept); {
		case errors.Is(err, fs.ErrNotExist):
			kept = ""
		case err != nil:
			return "", fmt.Errorf("keep the old index: %w", err)
		}
	}
	if err := os.Rename(tmp, d.index()); err != nil {
		return kept, fmt.Errorf("swap in %s: %w", filepath.Base(tmp), err)
	}
	return kept, wal.SyncDir(d.path)
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	return errors.Join(err, f.Close())
}
