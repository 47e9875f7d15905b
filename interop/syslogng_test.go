package interop

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/poll"
)

// syslogNGConfig reads the lines of input (one message each, unparsed) and
// sends them as NDJSON batches to the aggregator, with the query mapping
// the fields: topic and source from the query, the event_id from the
// content, @timestamp from $ISODATE, the rest into the payload.
func syslogNGConfig(dir, input, addr, topic string, workers int) string {
	return fmt.Sprintf(`@version: 3.38
options { stats_freq(0); };
source s_in { file(%q flags(no-parse) follow-freq(0.1)); };
destination d_agg {
  http(
    url("http://%s/publish?topic=%s&source=syslog-ng&id=content&extra=payload")
    method("POST")
    headers("Content-Type: application/x-ndjson")
    body("$(format-json --scope none message=$MESSAGE @timestamp=$ISODATE host=$HOST)")
    delimiter("\n")
    batch-lines(100)
    batch-timeout(100)
    workers(%d)
    retries(1000)
    time-reopen(1)
    timeout(10)
  );
};
# flow-control: the file source waits while the destination is down or
# refusing, instead of dropping what overflows the queue.
log { source(s_in); destination(d_agg); flags(flow-control); };
`, input, addr, url.QueryEscape(topic), workers)
}

// startSyslogNG runs syslog-ng in the foreground on the given config; it
// is stopped (SIGTERM) when the test ends.
func startSyslogNG(tb testing.TB, config string) {
	tb.Helper()
	bin, err := exec.LookPath("syslog-ng")
	if err != nil {
		tb.Skip("syslog-ng is not installed (apt-get install syslog-ng-core syslog-ng-mod-http; .ci/run does)")
	}
	dir := tb.TempDir()
	path := filepath.Join(dir, "syslog-ng.conf")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	out := &syncBuffer{}
	cmd := exec.Command(bin, "-F", "-e", "-f", path, "--persist-file", filepath.Join(dir, "persist"),
		"--pidfile", filepath.Join(dir, "pid"), "--control", filepath.Join(dir, "ctl"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if tb.Failed() {
			tb.Logf("syslog-ng config:\n%s\nsyslog-ng output:\n%s", config, out.String())
		}
	})
}

// writeLines writes n lines "line-1" to "line-n" to a new file.
func writeLines(tb testing.TB, n int) string {
	tb.Helper()
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line-%d\n", i)
	}
	path := filepath.Join(tb.TempDir(), "input.log")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// listedMessages counts the payload.message of every event of topic.
func (s *server) listedMessages(topic string) map[string]int {
	s.tb.Helper()
	msgs := map[string]int{}
	cursor := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"topic": {topic}, "limit": {"500"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		status, b, err := s.get("/events?" + q.Encode())
		if err != nil || status != http.StatusOK {
			s.tb.Fatalf("GET /events: %d %s %v", status, b, err)
		}
		var p struct {
			Events []struct {
				Payload struct {
					Message string `json:"message"`
				} `json:"payload"`
			} `json:"events"`
			NextCursor *string `json:"next_cursor"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			s.tb.Fatal(err)
		}
		for _, e := range p.Events {
			msgs[e.Payload.Message]++
		}
		if p.NextCursor == nil {
			return msgs
		}
		cursor = *p.NextCursor
	}
	s.tb.Fatal("listing does not end")
	return nil
}

// verifyLines checks that each of the n lines is listed exactly once.
func verifyLines(tb testing.TB, s *server, name, topic string, n int) stats {
	tb.Helper()
	st := s.drained()
	msgs := s.listedMessages(topic)
	listed := 0
	for i := 1; i <= n; i++ {
		if c := msgs["line-"+strconv.Itoa(i)]; c == 1 {
			listed++
		} else {
			tb.Errorf("line-%d listed %d times", i, c)
		}
	}
	if st.UniqueProcessed != uint64(n) {
		tb.Errorf("stats %+v, want %d unique", st, n)
	}
	tb.Logf("INTEROP | %-16s | sent %5d | received %5d | unique %5d | duplicates %4d | listed %5d |",
		name, n, st.Received, st.UniqueProcessed, st.DuplicateDropped, listed)
	return st
}

func waitUnique(tb testing.TB, s *server, n int) {
	tb.Helper()
	poll.Until(tb, 2*time.Minute, strconv.Itoa(n)+" unique events", func() bool {
		st, err := s.stats()
		return err == nil && st.UniqueProcessed >= uint64(n)
	})
}

func TestSyslogNG(t *testing.T) {
	const n = 2000
	s := startServer(t)
	topic := "interop-syslog-ng"
	startSyslogNG(t, syslogNGConfig(t.TempDir(), writeLines(t, n), s.addr, topic, 1))
	waitUnique(t, s, n)
	verifyLines(t, s, "syslog-ng", topic, n)
}

// TestSyslogNGServerRestart kills the aggregator while syslog-ng sends:
// syslog-ng retries the batch after time-reopen(1).
func TestSyslogNGServerRestart(t *testing.T) {
	const n = 20000
	s := startServer(t)
	topic := "interop-syslog-ng-restart"
	startSyslogNG(t, syslogNGConfig(t.TempDir(), writeLines(t, n), s.addr, topic, 1))
	poll.Until(t, time.Minute, "some events to arrive", func() bool {
		st, err := s.stats()
		return err == nil && st.Received >= 100
	})
	before, _ := s.stats()
	s.kill()
	s.start()
	waitUnique(t, s, n)
	verifyLines(t, s, "syslog-ng-restart", topic, n)
	if before.Received >= n {
		t.Fatal("the server was killed after everything arrived: no restart in the middle")
	}
}

// TestSyslogNG429 runs the aggregator with one write-path slot and no wait
// against four syslog-ng workers: syslog-ng 3.38 retries a batch refused
// with 429 after time-reopen() (it logs "Server returned with a 4XX ...
// trying again"), so every line arrives, slowly.
func TestSyslogNG429(t *testing.T) {
	const n = 1000
	s := startServer(t, "--max-inflight-publish", "1", "--inflight-wait", "0")
	topic := "interop-syslog-ng-429"
	startSyslogNG(t, syslogNGConfig(t.TempDir(), writeLines(t, n), s.addr, topic, 4))
	waitUnique(t, s, n)
	refused := s.refusals()
	verifyLines(t, s, "syslog-ng-429", topic, n)
	t.Logf("syslog-ng 429: %d requests refused and retried", refused)
	if refused == 0 {
		t.Skip("no request was refused: the storm did not happen (the check above still holds)")
	}
}
