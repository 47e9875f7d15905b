package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// TestKillUnderLoad builds the real binary, kills it with SIGKILL while
// publishers are sending, restarts it on the same data directory, and checks
// that every acknowledged event is listed exactly once. Then SIGTERM must stop
// it with status 0.
func TestKillUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the real binary; skipped with -short")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	const (
		rounds   = 3
		workers  = 4
		batch    = 25
		perRound = 2000 // acknowledged events before the kill
	)
	led := newLedger()
	seqs := seqLedger{}
	var acked uint64 // the named cursor's last acknowledged seq

	for round := range rounds {
		p := startProc(t, bin, dir)
		c := newClient(t, p.base)
		c.waitReady(30 * time.Second)
		c.drain(60 * time.Second)
		seqs.check(t, c)
		acked = checkCursorSurvives(t, c, acked)

		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var ackedThisRound, cut atomic.Int64
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if publishUntilStopped(ctx, c, led, fmt.Sprintf("r%d-w%d", round, w), batch, &ackedThisRound) {
					cut.Add(1)
				}
			}()
		}
		if !poll.Within(60*time.Second, func() bool { return ackedThisRound.Load() >= perRound }) {
			stop()
			wg.Wait()
			t.Fatalf("round %d: only %d events acknowledged in 60s", round, ackedThisRound.Load())
		}
		p.kill(t) // mid-load: requests are in flight
		// Every publisher now fails on its own; stop is only a backstop.
		workersDone := make(chan struct{})
		go func() { wg.Wait(); close(workersDone) }()
		select {
		case <-workersDone:
		case <-time.After(30 * time.Second):
		}
		stop()
		<-workersDone
		c.http.CloseIdleConnections()
		t.Logf("round %d: killed after %d acknowledged events (%d in total), %d requests cut by the kill",
			round, ackedThisRound.Load(), led.ackedCount(), cut.Load())
	}

	p := startProc(t, bin, dir)
	c := newClient(t, p.base)
	c.waitReady(30 * time.Second)
	st := c.drain(60 * time.Second)
	seqs.check(t, c)
	checkCursorSurvives(t, c, acked)
	listed := c.listAll("kill")

	count := map[string]int{}
	for _, e := range listed {
		count[e.EventID]++
		if count[e.EventID] == 2 {
			t.Errorf("event %s listed twice", e.EventID)
		}
		if e.Payload["id"] != e.EventID {
			t.Errorf("event %s has payload %v", e.EventID, e.Payload)
		}
		if !led.wasSent(e.EventID) {
			t.Errorf("event %s listed but never sent", e.EventID)
		}
	}
	missing := 0
	for id := range led.acked {
		if count[id] != 1 {
			missing++
			if missing <= 10 {
				t.Errorf("acknowledged event %s listed %d times", id, count[id])
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events not listed exactly once", missing, len(led.acked))
	}
	if st.UniqueProcessed != uint64(len(listed)) || st.Received < uint64(led.ackedPublishes()) {
		t.Fatalf("stats %+v: unique must equal the %d listed, received at least the %d acknowledged", st, len(listed), led.ackedPublishes())
	}
	t.Logf("%d acknowledged events (%d publishes incl. resends), %d listed, %d received, %d duplicates dropped",
		len(led.acked), led.ackedPublishes(), len(listed), st.Received, st.DuplicateDropped)

	if code := p.terminate(t); code != 0 {
		t.Fatalf("SIGTERM: exit status %d, want 0\n%s", code, p.out.String())
	}
}

// seqLedger remembers the seq of every unique event seen in the feed.
type seqLedger map[string]uint64

// check reads the whole feed: seqs must be dense from 1 to last_seq, and an
// event seen before must keep its seq.
func (l seqLedger) check(tb testing.TB, c *client) {
	tb.Helper()
	last := c.stats().LastSeq
	feed := c.feedAll("")
	if uint64(len(feed)) != last {
		tb.Fatalf("feed holds %d events, last_seq is %d", len(feed), last)
	}
	for i, e := range feed {
		if e.Seq != uint64(i+1) {
			tb.Fatalf("feed position %d has seq %d: a gap", i, e.Seq)
		}
		k := e.Topic + "/" + e.EventID
		if old, ok := l[k]; ok && old != e.Seq {
			tb.Fatalf("event %s had seq %d, now %d", k, old, e.Seq)
		}
		l[k] = e.Seq
	}
}

// checkCursorSurvives checks that the named cursor "drill" kept at least
// the acked seq across the restart, then acknowledges the last seq and
// returns it.
func checkCursorSurvives(tb testing.TB, c *client, acked uint64) uint64 {
	tb.Helper()
	status, body := c.do(http.MethodPut, "/consumers/drill", "application/json", nil)
	if status != http.StatusCreated && status != http.StatusOK {
		tb.Fatalf("put cursor: %d %s", status, body)
	}
	var cur struct {
		Acked uint64 `json:"acked"`
	}
	mustDecode(tb, body, &cur)
	if cur.Acked != acked {
		tb.Fatalf("cursor acked %d after the restart, was acknowledged to %d", cur.Acked, acked)
	}
	last := c.stats().LastSeq
	if status, body := c.do(http.MethodPost, "/consumers/drill/ack", "application/json",
		[]byte(fmt.Sprintf(`{"seq":%d}`, last))); status != http.StatusOK {
		tb.Fatalf("ack: %d %s", status, body)
	}
	return last
}

// ledger remembers what was sent and what was acknowledged.
type ledger struct {
	mu    sync.Mutex
	sent  map[string]bool
	acked map[string]bool
	pubs  int // acknowledged events, counting resends
}

func newLedger() *ledger { return &ledger{sent: map[string]bool{}, acked: map[string]bool{}} }

func (l *ledger) markSent(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		l.sent[id] = true
	}
}

func (l *ledger) markAcked(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		l.acked[id] = true
	}
	l.pubs += len(ids)
}

func (l *ledger) wasSent(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent[id]
}

func (l *ledger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

func (l *ledger) ackedPublishes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pubs
}

// publishUntilStopped sends batches of new events (every fourth batch also
// resends an event acknowledged before, a duplicate) until ctx ends or the
// server goes away; it reports whether a request failed before ctx ended (the
// server died under it).
func publishUntilStopped(ctx context.Context, c *client, led *ledger, prefix string, batch int, acked *atomic.Int64) bool {
	var mine []string
	for seq := 0; seq < 100_000 && ctx.Err() == nil; seq++ {
		ids := make([]string, 0, batch+1)
		for k := range batch {
			ids = append(ids, fmt.Sprintf("%s-%d", prefix, seq*batch+k))
		}
		if seq%4 == 3 && len(mine) > 0 {
			ids = append(ids, mine[seq%len(mine)])
		}
		events := make([]map[string]any, len(ids))
		for i, id := range ids {
			events[i] = map[string]any{"topic": "kill", "event_id": id, "source": prefix,
				"timestamp": time.Date(2025, 10, 20, 0, 0, 0, seq, time.UTC).Format(time.RFC3339Nano),
				"payload":   map[string]any{"id": id}}
		}
		body, err := json.Marshal(events)
		if err != nil {
			panic(err)
		}
		led.markSent(ids)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/publish", bytes.NewReader(body))
		if err != nil {
			return false
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			return ctx.Err() == nil // killed (or stopped): this batch is not acknowledged
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		led.markAcked(ids)
		mine = append(mine, ids[0])
		acked.Add(int64(len(ids)))
	}
	return false
}

// buildBinary builds this command into a temporary directory.
func buildBinary(tb testing.TB) string {
	tb.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		tb.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(tb.TempDir(), "aggregator")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is the aggregator binary running as a child process.
type proc struct {
	cmd    *exec.Cmd
	base   string
	out    *addrWatcher
	exited chan struct{}
	err    error
}

// startProc starts bin on 127.0.0.1:0 and learns its address from the
// "listening" log line.
func startProc(tb testing.TB, bin, dir string) *proc {
	tb.Helper()
	w := &addrWatcher{found: make(chan string, 1)}
	cmd := exec.Command(bin, "--addr", "127.0.0.1:0", "--data-dir", dir, "--log-format", "json")
	cmd.Stdout = w
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start: %v", err)
	}
	p := &proc{cmd: cmd, out: w, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case addr := <-w.found:
		p.base = "http://" + addr
	case <-p.exited:
		tb.Fatalf("aggregator exited at start: %v\n%s", p.err, w.String())
	case <-time.After(30 * time.Second):
		tb.Fatalf("aggregator did not listen within 30s\n%s", w.String())
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		tb.Fatalf("kill: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		tb.Fatal("process survived SIGKILL for 30s")
	}
}

// terminate sends SIGTERM and returns the exit status.
func (p *proc) terminate(tb testing.TB) int {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatalf("sigterm: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		tb.Fatal("process ignored SIGTERM for 60s")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		tb.Fatalf("wait: %v", p.err)
	}
	return 0
}

// addrWatcher keeps the process output and reports the address of the
// first {"msg":"listening","addr":...} line.
type addrWatcher struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	scanned int
	found   chan string
	done    bool
}

func (w *addrWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for !w.done {
		rest := w.buf.Bytes()[w.scanned:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i]
		w.scanned += i + 1
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" && rec.Addr != "" {
			w.found <- rec.Addr
			w.done = true
		}
	}
	return len(p), nil
}

func (w *addrWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
