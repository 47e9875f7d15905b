package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/api"
	"github.com/aggregator-dev/aggregator/internal/poll"
	"github.com/aggregator-dev/aggregator/wal"
)

// runCmd runs `aggregator <args>` in-process and returns its exit status
// and outputs.
func runCmd(tb testing.TB, args ...string) (code int, stdout, stderr string) {
	tb.Helper()
	var out, errb bytes.Buffer
	code = runCommand(context.Background(), args, &out, &errb, envOf(nil))
	return code, out.String(), errb.String()
}

// events returns n events of topic with ids from first on, with a payload
// of pad bytes.
func events(topic string, first, n, pad int) []any {
	out := make([]any, n)
	for i := range out {
		e := makeEvent(first+i, topic)
		e["payload"] = map[string]any{"i": first + i, "pad": strings.Repeat("x", pad)}
		out[i] = e
	}
	return out
}

// ids returns the (topic, event_id) of stored events, failing on a repeat.
func ids(tb testing.TB, evs []storedEvent) map[string]storedEvent {
	tb.Helper()
	out := map[string]storedEvent{}
	for _, e := range evs {
		k := e.Topic + "/" + e.EventID
		if _, ok := out[k]; ok {
			tb.Fatalf("event %s listed twice", k)
		}
		out[k] = e
	}
	return out
}

const testAdminToken = "admin-0123456789abcdef"

func TestRetentionOnRealWiring(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) {
		c.Lifecycle.RetainEvents = 5
		c.Tokens = api.Tokens{Admin: testAdminToken, Read: "read-0123456789abcdef"}
	})
	ts.token = testAdminToken
	ts.publish(events("a", 0, 20, 10))
	ts.publish(events("b", 0, 3, 10))
	st := ts.drain(10 * time.Second)
	if st.Expired != 15 || st.Stored != 8 || st.UniqueProcessed != 23 || st.FirstSeq != 16 {
		t.Fatalf("stats %+v", st)
	}
	if got := len(ts.feedAll("")); got != 8 {
		t.Fatalf("feed lists %d events, want 8", got)
	}
	if p := ts.feed("after=3&limit=2"); len(p.Events) != 2 || p.Events[0].Seq != 16 {
		t.Fatalf("feed after an expired seq: %+v", p)
	}
	// A topic's own retention, by the admin token only.
	body := []byte(`{"events": 1}`)
	ts.token = "read-0123456789abcdef"
	if status, reply := ts.do(http.MethodPut, "/topics/b/retention", "application/json", body); status != http.StatusForbidden {
		t.Fatalf("PUT retention with the read token: %d %s", status, reply)
	}
	ts.token = testAdminToken
	status, reply := ts.do(http.MethodPut, "/topics/b/retention", "application/json", body)
	if status != http.StatusOK || !strings.Contains(string(reply), `"effective":{"age":null,"events":1}`) {
		t.Fatalf("PUT retention: %d %s", status, reply)
	}
	poll.Until(t, 10*time.Second, "topic b expired by its own retention (idle step)", func() bool {
		return ts.stats().Expired == 17
	})
	// A late resend of an expired event is still a duplicate, of a seq gone.
	status, reply = ts.do(http.MethodPost, "/publish?wait=applied", "application/json", mustJSON(t, makeEvent(0, "a")))
	if status != http.StatusOK || !strings.Contains(string(reply), `"status":"duplicate","seq":1}`) {
		t.Fatalf("resend of an expired event: %d %s", status, reply)
	}
	st = ts.drain(10 * time.Second)
	if st.Received != st.UniqueProcessed+st.DuplicateDropped || st.Stored != st.UniqueProcessed-st.Expired {
		t.Fatalf("invariants: %+v", st)
	}
}

// TestBackupUnderLoadThenRestore takes a backup while events are published
// and applied between the reads of its body, restores it into a new data
// directory, and checks that every event applied before the backup began
// is listed there once, with its seq, and that the counters add up.
func TestBackupUnderLoadThenRestore(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) { c.Lifecycle.RetainEvents = 300 })
	for i := range 10 {
		ts.publish(append(events("a", i*100, 100, 50), events("b", i*10, 10, 50)...))
		ts.publish(events("a", i*100, 5, 50)) // duplicates
	}
	before := ts.drain(10 * time.Second)
	applied := ids(t, ts.feedAll(""))

	req, _ := http.NewRequest(http.MethodGet, ts.base+"/admin/backup", nil)
	resp, err := ts.http.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /admin/backup: %v %v", resp, err)
	}
	defer resp.Body.Close()
	if cp, _ := strconv.ParseUint(resp.Header.Get("X-Aggregator-Checkpoint"), 10, 64); cp != before.WAL.Checkpoint {
		t.Fatalf("backup checkpoint %s, want %d", resp.Header.Get("X-Aggregator-Checkpoint"), before.WAL.Checkpoint)
	}
	// Read the body slowly: between two reads, publish and wait for the
	// consumer to apply (it must not wait for the backup).
	var stream bytes.Buffer
	published := 0
	for i := 0; ; i++ {
		n, err := io.CopyN(&stream, resp.Body, 16<<10)
		if err == io.EOF || (err == nil && n == 0) {
			break
		}
		if err != nil {
			t.Fatalf("read the backup: %v", err)
		}
		if i%4 == 0 {
			status, reply := ts.do(http.MethodPost, "/publish?wait=applied", "application/json", mustJSON(t, events("c", i*20, 20, 50)))
			if status != http.StatusOK {
				t.Fatalf("publish during the backup: %d %s", status, reply)
			}
			published++
		}
	}
	if published < 2 || strconv.Itoa(stream.Len()) != resp.Header.Get("Content-Length") {
		t.Fatalf("%d publishes during the backup, %d bytes of %s", published, stream.Len(), resp.Header.Get("Content-Length"))
	}
	file := filepath.Join(t.TempDir(), "index.backup")
	if err := os.WriteFile(file, stream.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	if code, out, errs := runCmd(t, "restore", "--from", file, "--data-dir", dir); code != 0 {
		t.Fatalf("restore: %d %s %s", code, out, errs)
	}
	if code, _, errs := runCmd(t, "restore", "--from", file, "--data-dir", dir); code != exitUsage || !strings.Contains(errs, "not empty") {
		t.Fatalf("restore over a data directory: %d %s", code, errs)
	}
	rs := startServer(t, dir, func(c *Config) { c.Lifecycle.RetainEvents = 300 })
	st := rs.stats()
	got := ids(t, rs.feedAll(""))
	if len(got) != len(applied) || st.UniqueProcessed != before.UniqueProcessed || st.DuplicateDropped != before.DuplicateDropped ||
		st.WAL.Checkpoint != before.WAL.Checkpoint || st.Received != before.Received || st.WAL.FirstOffset != before.WAL.Checkpoint+1 {
		t.Fatalf("restored: %+v with %d events, before the backup %+v with %d", st, len(got), before, len(applied))
	}
	for k, e := range applied {
		if g, ok := got[k]; !ok || g.Seq != e.Seq || g.Offset != e.Offset {
			t.Fatalf("event %s: %+v after the restore, %+v before", k, g, e)
		}
	}
	// The restored service goes on: offsets after the checkpoint, dedup
	// against what the snapshot holds.
	r := rs.publish(append(events("a", 999, 1, 0), makeEvent(5000, "new")))
	if r.FirstOffset != before.WAL.Checkpoint+1 {
		t.Fatalf("first offset after the restore %d, want %d", r.FirstOffset, before.WAL.Checkpoint+1)
	}
	st = rs.drain(10 * time.Second)
	if st.UniqueProcessed != before.UniqueProcessed+1 || st.DuplicateDropped != before.DuplicateDropped+1 {
		t.Fatalf("after publishing to the restored service: %+v", st)
	}
}

func TestRestoreRefusesADamagedBackup(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ts.publish(events("a", 0, 50, 10))
	ts.drain(10 * time.Second)
	status, stream := ts.do(http.MethodGet, "/admin/backup", "", nil)
	if status != http.StatusOK {
		t.Fatal(status)
	}
	stream[len(stream)/2] ^= 1
	file := filepath.Join(t.TempDir(), "index.backup")
	if err := os.WriteFile(file, stream, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	code, _, errs := runCmd(t, "restore", "--from", file, "--data-dir", dir)
	if code != exitFailed || !strings.Contains(errs, "CRC") {
		t.Fatalf("restore of a damaged backup: %d %s", code, errs)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused restore left %v", ents)
	}
	if code, _, _ := runCmd(t, "restore", "--data-dir", dir); code != exitUsage {
		t.Fatalf("restore without --from: %d", code)
	}
}

// TestFormat2RefusedThenUpgraded: the server refuses an index of the
// previous release and names the command that converts it; after
// upgrade-index it serves the same events.
func TestFormat2RefusedThenUpgraded(t *testing.T) {
	dir := t.TempDir()
	fixture, err := os.ReadFile(filepath.Join("..", "..", "dedup", "testdata", "format2", "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.db"), fixture, 0o600); err != nil {
		t.Fatal(err)
	}
	// Its log was truncated up to the checkpoint 400 long ago.
	if err := wal.Create(filepath.Join(dir, "wal"), 401); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Addr, cfg.DataDir = "127.0.0.1:0", dir
	err = NewServer(cfg, nil).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "aggregator upgrade-index --data-dir "+dir) {
		t.Fatalf("start on format 2: %v", err)
	}
	code, out, errs := runCmd(t, "upgrade-index", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "353 events") {
		t.Fatalf("upgrade-index: %d %s %s", code, out, errs)
	}
	if code, out, _ := runCmd(t, "upgrade-index", "--data-dir", dir); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("upgrade-index again: %d %s", code, out)
	}
	if code, out, _ := runCmd(t, "check", "--data-dir", dir); code != 0 {
		t.Fatalf("check after the upgrade: %d %s", code, out)
	}
	ts := startServer(t, dir, nil)
	st := ts.stats()
	if st.UniqueProcessed != 353 || st.DuplicateDropped != 37 || st.WAL.Checkpoint != 400 || st.LastSeq != 353 {
		t.Fatalf("upgraded: %+v", st)
	}
	if got := len(ts.feedAll("")); got != 353 {
		t.Fatalf("feed lists %d events, want 353", got)
	}
	if r := ts.publish(makeEvent(1, "new")); r.FirstOffset != 401 {
		t.Fatalf("first offset %d", r.FirstOffset)
	}
	poll.Until(t, 10*time.Second, "the new event applied", func() bool { return ts.stats().LastSeq == 354 })
}

func TestLifecycleFlags(t *testing.T) {
	c, err := parseConfig([]string{"--retain-events", "1000000", "--retain-age", "720h", "--dedup-window", "24h",
		"--wal-retain-bytes", "-1"}, envOf(map[string]string{"AGG_WAL_RETAIN_AGE": "168h"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := lifecycleConfig{RetainAge: 720 * time.Hour, RetainEvents: 1_000_000, DedupWindow: 24 * time.Hour,
		WALRetainBytes: -1, WALRetainAge: 168 * time.Hour}
	if c.Lifecycle != want {
		t.Fatalf("lifecycle %+v, want %+v", c.Lifecycle, want)
	}
	for _, args := range [][]string{{"--retain-age", "-1h"}, {"--dedup-window", "-1s"}, {"--wal-retain-bytes", "-2"}} {
		if _, err := parseConfig(args, envOf(nil), &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestCommandDispatch(t *testing.T) {
	if code, out, _ := runCmd(t, "help"); code != 0 || !strings.Contains(out, "rebuild-index") {
		t.Fatalf("help: %d %s", code, out)
	}
	if code, _, errs := runCmd(t, "frobnicate"); code != exitUsage || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %d %s", code, errs)
	}
	if code, _, _ := runCmd(t, "check", "--nope"); code != exitUsage {
		t.Fatalf("bad flag: %d", code)
	}
	if code, _, errs := runCmd(t, "compact", "extra"); code != exitUsage || !strings.Contains(errs, "unexpected argument") {
		t.Fatalf("extra argument: %d %s", code, errs)
	}
	if code, _, _ := runCmd(t, "compact", "-h"); code != 0 {
		t.Fatalf("compact -h: %d", code)
	}
	if code, _, errs := runCmd(t, "compact", "--data-dir", t.TempDir()); code != exitUsage || !strings.Contains(errs, "not a data directory") {
		t.Fatalf("compact of an empty directory: %d %s", code, errs)
	}
	// The server's command line is unchanged: flags first.
	if code := run([]string{"--nope"}, envOf(nil), &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Fatalf("server with a bad flag: %d", code)
	}
}
