// Package e2e holds the tests that run the aggregator binary as a user
// would: the OpenAPI document checked against real replies, and the
// dashboard in headless Chromium. It is a module of its own so that its
// test-only dependencies (chromedp, libopenapi-validator) stay out of the
// service's go.mod; `make test` runs it after the main module.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// binary is the aggregator built once for the package's tests, by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "aggregator-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if binary, err = build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// build compiles ../cmd/aggregator (the main module, next to this one) into
// dir; with the race detector when E2E_RACE is -race (make test sets it
// where cgo works), so that a race in the server under these tests fails
// them (the binary then exits with status 66).
func build(dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("go tool not found: %w", err)
	}
	bin := filepath.Join(dir, "aggregator")
	args := []string{"build", "-o", bin}
	if os.Getenv("E2E_RACE") == "-race" {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool, append(args, "./cmd/aggregator")...)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/aggregator: %w\n%s", err, out)
	}
	return bin, nil
}

// Tokens of the servers that protect their routes.
const (
	publishToken = "publish-0123456789abcdef"
	readToken    = "read-0123456789abcdef"
)

// aggregator is the binary running as a child process on 127.0.0.1.
type aggregator struct {
	base   string
	cmd    *exec.Cmd
	out    *logWatcher
	exited chan struct{}
	err    error
}

// start runs the binary with a data directory of the test and extra flags,
// learns its address from its "listening" log line, and stops it with
// SIGTERM at the end of the test, requiring exit status 0.
func start(tb testing.TB, args ...string) *aggregator {
	tb.Helper()
	w := &logWatcher{found: make(chan string, 1)}
	args = append([]string{"--addr", "127.0.0.1:0", "--data-dir", tb.TempDir(), "--log-format", "json"}, args...)
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start aggregator: %v", err)
	}
	a := &aggregator{cmd: cmd, out: w, exited: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.exited)
	}()
	tb.Cleanup(func() { a.stop(tb) })
	select {
	case addr := <-w.found:
		a.base = "http://" + addr
	case <-a.exited:
		tb.Fatalf("aggregator exited at start: %v\n%s", a.err, w)
	case <-time.After(30 * time.Second):
		tb.Fatalf("aggregator did not listen within 30s\n%s", w)
	}
	a.waitReady(tb)
	return a
}

func (a *aggregator) waitReady(tb testing.TB) {
	tb.Helper()
	var (
		status int
		err    error
	)
	ready := poll.Within(30*time.Second, func() bool {
		var resp *http.Response
		if resp, err = http.Get(a.base + "/readyz"); err != nil {
			return false
		}
		resp.Body.Close()
		status = resp.StatusCode
		return status == http.StatusOK
	})
	if !ready {
		tb.Fatalf("aggregator not ready within 30s (last: %d, %v)\n%s", status, err, a.out)
	}
}

func (a *aggregator) stop(tb testing.TB) {
	tb.Helper()
	select {
	case <-a.exited:
	default:
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
			tb.Errorf("aggregator ignored SIGTERM for 30s\n%s", a.out)
			return
		}
	}
	if a.err != nil {
		tb.Errorf("aggregator exited with %v\n%s", a.err, a.out)
	}
	if tb.Failed() {
		tb.Logf("aggregator log:\n%s", a.out)
	}
}

// publish posts body with token ("" = none) and requires 200.
func (a *aggregator) publish(tb testing.TB, token, body string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, a.base+"/publish", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("publish: %d %s", resp.StatusCode, out)
	}
}

// logWatcher keeps the process output and reports the address of the
// first {"msg":"listening","addr":...} line.
type logWatcher struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	scanned int
	found   chan string
	done    bool
}

func (w *logWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for !w.done {
		rest := w.buf.Bytes()[w.scanned:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		w.scanned += i + 1
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(rest[:i], &rec) == nil && rec.Msg == "listening" && rec.Addr != "" {
			w.found <- rec.Addr
			w.done = true
		}
	}
	return len(p), nil
}

func (w *logWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
