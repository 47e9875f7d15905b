package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binaries are the programs the benchmarks run, built once per test binary.
type binaries struct {
	aggregator, loadgen, nullserver string
}

var (
	buildOnce sync.Once
	built     binaries
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// bins builds the aggregator, the load generator and the null server.
func bins(tb testing.TB) binaries {
	tb.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "aggregator-bench-"); buildErr != nil {
			return
		}
		for _, p := range []struct {
			pkg string
			out *string
		}{{"../cmd/aggregator", &built.aggregator}, {"../cmd/loadgen", &built.loadgen}, {"./nullserver", &built.nullserver}} {
			*p.out = filepath.Join(buildDir, filepath.Base(p.pkg))
			out, err := exec.Command("go", "build", "-o", *p.out, p.pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %w\n%s", p.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return built
}

// seconds is the length of a publish run (BENCH_SECONDS, default 5).
func seconds() float64 {
	if s, err := strconv.ParseFloat(os.Getenv("BENCH_SECONDS"), 64); err == nil && s > 0 {
		return s
	}
	return 5
}

// proc is a server process on 127.0.0.1.
type proc struct {
	cmd  *exec.Cmd
	base string
	log  bytes.Buffer
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs bin with --addr and args and waits (up to a minute) for its
// /readyz.
func start(tb testing.TB, bin string, args ...string) *proc {
	tb.Helper()
	addr := freeAddr(tb)
	p := &proc{base: "http://" + addr}
	p.cmd = exec.Command(bin, append([]string{"--addr", addr}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.stop)
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready in a minute: %v\n%s", bin, err, p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startAggregator runs the aggregator on a fresh data directory.
func startAggregator(tb testing.TB, args ...string) *proc {
	tb.Helper()
	return start(tb, bins(tb).aggregator, append([]string{"--data-dir", filepath.Join(tb.TempDir(), "data")}, args...)...)
}

// stop ends the process with SIGTERM (SIGKILL after 30 s).
func (p *proc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// cpu returns the user+system CPU time the process has used so far.
func (p *proc) cpu(tb testing.TB) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100) // clock ticks of 10 ms
}

// rssAnon returns the process's anonymous resident memory in bytes.
func (p *proc) rssAnon(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// loadgen runs the load generator with args (a command and its flags,
// --json is added) and decodes the JSON line it prints into out.
func loadgen(tb testing.TB, ctx context.Context, out any, args ...string) {
	tb.Helper()
	cmd := exec.CommandContext(ctx, bins(tb).loadgen, append(args, "--json")...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Exit status 1 is a run that did not send all it planned: the cells
	// stop at a duration, not a count. Its summary is still printed.
	var exit *exec.ExitError
	if err := cmd.Run(); err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1 && stdout.Len() > 0) {
		tb.Fatalf("loadgen %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), out); err != nil {
		tb.Fatalf("loadgen %s: %v: %q", strings.Join(args, " "), err, stdout.String())
	}
}

// publishSummary is the part of `loadgen publish --json` the benchmarks use.
type publishSummary struct {
	EventsAcked  int     `json:"events_acked"`
	EventsPerS   float64 `json:"events_per_s"`
	RequestsPerS float64 `json:"requests_per_s"`
	ElapsedS     float64 `json:"elapsed_s"`
	LatencyMS    struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
	Lag *struct {
		DrainS    float64 `json:"drain_s"`
		Processed float64 `json:"processed_per_s"` // applied (unique + duplicates) per second, over the run and the drain
	} `json:"consumer_lag"`
}

// consumeSummary is the part of `loadgen consume --json` the benchmarks use.
type consumeSummary struct {
	Events    int     `json:"events"`
	PerSecond float64 `json:"events_per_s"`
	Latency   *struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
}

// record reports the figures of a cell as benchmark metrics and appends
// them, with the cell's name, to $BENCH_OUT when it is set.
func record(b *testing.B, figures map[string]float64) {
	b.Helper()
	for unit, v := range figures {
		b.ReportMetric(v, unit)
	}
	path := os.Getenv("BENCH_OUT")
	if path == "" {
		return
	}
	line, _ := json.Marshal(map[string]any{"cell": b.Name(), "time": time.Now().UTC().Format(time.RFC3339),
		"figures": figures})
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		b.Fatal(err)
	}
}
