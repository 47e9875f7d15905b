package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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

// runStartup starts a server binary on an existing data directory and
// measures the time to ready and to lag 0, and its resident memory.
func runStartup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen startup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("server", "", "aggregator binary (required)")
	dataDir := fs.String("data-dir", "", "data directory to start on (required)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound of each wait")
	jsonOut := fs.Bool("json", false, "print the report as one JSON line")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *bin == "" || *dataDir == "" {
		fmt.Fprintln(stderr, "loadgen: startup needs -server and -data-dir")
		return exitUsage
	}
	addr, err := freeAddr()
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
	base := "http://" + addr
	c := newClient(1)
	defer c.CloseIdleConnections()
	start := time.Now()
	srv, err := startServer(*bin, addr, *dataDir, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitUsage
	}
	defer srv.kill()
	var rep startupReport
	ready, err := waitReady(ctx, c, base, srv, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitFail
	}
	rep.ReadyS = ready.Seconds()
	rep.RSSReadyMB = procStatusMB(srv.cmd.Process.Pid, "VmRSS")
	if s, err := getStats(ctx, c, base); err == nil {
		rep.LagAtReady = s.WAL.Lag
	}
	s, err := waitLagZero(ctx, c, base, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return exitFail
	}
	rep.Lag0S = time.Since(start).Seconds()
	pid := srv.cmd.Process.Pid
	rep.RSSLag0MB = procStatusMB(pid, "VmRSS")
	rep.AnonLag0MB = procStatusMB(pid, "RssAnon")
	rep.FileLag0MB = procStatusMB(pid, "RssFile")
	rep.Unique, rep.LastOffset = s.UniqueProcessed, s.WAL.LastOffset
	if rep.SigtermExit, err = srv.terminate(*timeout); err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
	}
	if *jsonOut {
		b, _ := json.Marshal(rep)
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "ready in %.3fs (lag %d), lag 0 in %.3fs; %d unique events, last offset %d; RSS %.1f MB at ready, %.1f MB at lag 0 (anon %.1f, file %.1f); SIGTERM exit %d\n",
			rep.ReadyS, rep.LagAtReady, rep.Lag0S, rep.Unique, rep.LastOffset, rep.RSSReadyMB, rep.RSSLag0MB,
			rep.AnonLag0MB, rep.FileLag0MB, rep.SigtermExit)
	}
	if rep.SigtermExit != 0 {
		return exitFail
	}
	return exitOK
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
