package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// startupReport is what the startup command measures.
type startupReport struct {
	ReadyS      float64 `json:"ready_s"`      // from process start to GET /readyz 200
	Lag0S       float64 `json:"lag0_s"`       // from process start to wal.lag 0
	LagAtReady  uint64  `json:"lag_at_ready"` // consumer lag when ready
	Unique      uint64  `json:"unique_processed"`
	LastOffset  uint64  `json:"last_offset"`
	RSSReadyMB  float64 `json:"rss_ready_mb"`
	RSSLag0MB   float64 `json:"rss_lag0_mb"`
	AnonLag0MB  float64 `json:"rss_anon_lag0_mb"` // heap and stacks: the part not backed by files
	FileLag0MB  float64 `json:"rss_file_lag0_mb"` // mapped file pages (the bbolt index mmap)
	SigtermExit int     `json:"sigterm_exit"`
}

// startupCommand starts a server binary on an existing data directory and
// measures the time to ready and to lag 0, and its resident memory. A server
// that does not get ready or catch up, or that does not exit 0 on SIGTERM,
// is a failed check.
type startupCommand struct {
	stdout, stderr io.Writer

	server  string // aggregator binary
	dataDir string
	timeout time.Duration // bound of each wait
	jsonOut bool
}

// Run measures the start of the server the flags in args name.
func (c *startupCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen startup", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.server, "server", "", "aggregator binary (required)")
	fs.StringVar(&c.dataDir, "data-dir", "", "data directory to start on (required)")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "bound of each wait")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as one JSON line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if c.server == "" || c.dataDir == "" {
		return usagef("startup needs -server and -data-dir")
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	client := newClient(1)
	defer client.CloseIdleConnections()
	start := time.Now()
	srv, err := startServer(c.server, addr, c.dataDir, c.stderr)
	if err != nil {
		return err
	}
	defer srv.kill()
	rep, err := c.measure(ctx, client, "http://"+addr, srv, start)
	if err != nil {
		return checkFailed(err)
	}
	if rep.SigtermExit, err = srv.terminate(c.timeout); err != nil {
		fmt.Fprintln(c.stderr, "loadgen:", err) // and SigtermExit is -1: a failed check
	}
	if c.jsonOut {
		writeJSONLine(c.stdout, rep)
	} else {
		fmt.Fprintf(c.stdout, "ready in %.3fs (lag %d), lag 0 in %.3fs; %d unique events, last offset %d; RSS %.1f MB at ready, %.1f MB at lag 0 (anon %.1f, file %.1f); SIGTERM exit %d\n",
			rep.ReadyS, rep.LagAtReady, rep.Lag0S, rep.Unique, rep.LastOffset, rep.RSSReadyMB, rep.RSSLag0MB,
			rep.AnonLag0MB, rep.FileLag0MB, rep.SigtermExit)
	}
	if rep.SigtermExit != 0 {
		return errCheckFailed
	}
	return nil
}

// measure waits for srv, started at start, to be ready and then to reach
// lag 0, and reports how long each took and the memory it held at each.
func (c *startupCommand) measure(ctx context.Context, client *http.Client, base string, srv *serverProc, start time.Time) (startupReport, error) {
	var rep startupReport
	ready, err := waitReady(ctx, client, base, srv, c.timeout)
	if err != nil {
		return rep, err
	}
	pid := srv.cmd.Process.Pid
	rep.ReadyS = ready.Seconds()
	rep.RSSReadyMB = procStatusMB(pid, "VmRSS")
	if s, err := getStats(ctx, client, base); err == nil {
		rep.LagAtReady = s.WAL.Lag
	}
	s, err := waitLagZero(ctx, client, base, c.timeout)
	if err != nil {
		return rep, err
	}
	rep.Lag0S = time.Since(start).Seconds()
	rep.RSSLag0MB = procStatusMB(pid, "VmRSS")
	rep.AnonLag0MB = procStatusMB(pid, "RssAnon")
	rep.FileLag0MB = procStatusMB(pid, "RssFile")
	rep.Unique, rep.LastOffset = s.UniqueProcessed, s.WAL.LastOffset
	return rep, nil
}

// procStatusMB returns a kB field of /proc/<pid>/status (VmRSS, RssAnon,
// RssFile) in MB, or 0 if unknown.
func procStatusMB(pid int, field string) float64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
