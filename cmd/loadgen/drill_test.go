package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineLogger passes each line written to it to t.Log.
type lineLogger struct {
	tb  testing.TB
	mu  sync.Mutex
	all bytes.Buffer
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.tb.Log(line)
	}
	return len(p), nil
}

// buildBinary builds the package at pkg into a temporary directory, or
// returns the build output as an error text.
func buildBinary(tb testing.TB, pkg, name string) (string, string) {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		return "", err.Error() + "\n" + string(out)
	}
	return bin, ""
}

func runDrillTest(t *testing.T, bin string, cycles, events int, format string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := &lineLogger{tb: t}
	batch := 25
	if format == formatObject {
		batch = 1
	}
	res, err := drill(ctx, drillConfig{
		Server:  bin,
		WorkDir: t.TempDir(),
		Cycles:  cycles,
		Gen: genConfig{Events: events, Batch: batch, Format: format, PayloadSize: 128,
			DupFraction: 0.2, Topics: 3, Seed: uint64(time.Now().UnixNano())},
		Concurrency: 4,
		Timeout:     30 * time.Second,
		Out:         out,
	})
	if err != nil {
		t.Fatalf("drill: %v", err)
	}
	if res.Failed != 0 || res.Passed != cycles+5 {
		log, _ := os.ReadFile(filepath.Join(res.WorkDir, "server.log"))
		t.Fatalf("%d passed, %d failed (want %d passed); server log tail:\n%s", res.Passed, res.Failed, cycles+5,
			tail(string(log), 3000))
	}
	if got := strings.Count(out.all.String(), ": ok: "); got != cycles+5 {
		t.Fatalf("%d ok lines, want %d", got, cycles+5)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestDrillLogic runs the drill against testdata/fakeagg, a minimal durable
// stand-in, so the drill's own steps (kill, torn tail, SIGTERM, resend,
// verify) are tested whatever state the real server is in.
func TestDrillLogic(t *testing.T) {
	bin, failure := buildBinary(t, "./testdata/fakeagg", "fakeagg")
	if failure != "" {
		t.Fatalf("build fake: %s", failure)
	}
	runDrillTest(t, bin, 2, 1500, formatArray)
}

// TestDrillDetectsFaults runs the drill against a fake that loses the oldest
// acknowledged event at every start, or exits 1 on SIGTERM: the drill must
// fail those cases.
func TestDrillDetectsFaults(t *testing.T) {
	bin, failure := buildBinary(t, "./testdata/fakeagg", "fakeagg")
	if failure != "" {
		t.Fatalf("build fake: %s", failure)
	}
	for fault, want := range map[string]string{
		"forget-first":   "cycle 1/1: FAIL: verify: acknowledged",
		"sigterm-exit-1": "sigterm: FAIL: exit status 1 after SIGTERM",
	} {
		t.Run(fault, func(t *testing.T) {
			t.Setenv("FAKEAGG_FAULT", fault)
			out := &lineLogger{tb: t}
			res, err := drill(context.Background(), drillConfig{
				Server: bin, WorkDir: t.TempDir(), Cycles: 1,
				Gen:         genConfig{Events: 400, Batch: 10, Format: formatArray, PayloadSize: 16, DupFraction: 0.2, Topics: 2, Seed: 7},
				Concurrency: 2, Timeout: 20 * time.Second, Out: out,
			})
			if err != nil {
				t.Fatalf("drill: %v", err)
			}
			if res.Failed == 0 || !strings.Contains(out.all.String(), want) {
				t.Fatalf("%d passed, %d failed; want a line %q", res.Passed, res.Failed, want)
			}
		})
	}
}

// TestDrill is the crash drill, shortened, on the real cmd/aggregator.
func TestDrill(t *testing.T) {
	if _, err := os.Stat("../aggregator"); err != nil {
		t.Skip("skipping the crash drill: cmd/aggregator does not exist yet")
	}
	bin, failure := buildBinary(t, "../aggregator", "aggregator")
	if failure != "" {
		t.Skipf("skipping the crash drill: the server package cmd/aggregator does not build yet:\n%s", failure)
	}
	events := 4000
	if testing.Short() {
		events = 1500
	}
	runDrillTest(t, bin, 2, events, formatNDJSON)
}

func TestStartupCommand(t *testing.T) {
	bin, failure := buildBinary(t, "./testdata/fakeagg", "fakeagg")
	if failure != "" {
		t.Fatalf("build fake: %s", failure)
	}
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"startup", "--server", bin, "--data-dir", dir, "--json", "--timeout", "20s"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	var rep startupReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if rep.ReadyS <= 0 || rep.Lag0S < rep.ReadyS || rep.RSSReadyMB <= 0 || rep.SigtermExit != 0 {
		t.Fatalf("report %+v", rep)
	}
	t.Setenv("FAKEAGG_FAULT", "sigterm-exit-1")
	out.Reset()
	if code := run(context.Background(), []string{"startup", "--server", bin, "--data-dir", dir, "--json"}, &out, &errb); code != exitFail {
		t.Fatalf("exit %d with a server exiting 1 on SIGTERM: %s", code, out.String())
	}
}
