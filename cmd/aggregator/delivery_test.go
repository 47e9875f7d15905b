package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/internal/poll"
	"github.com/aggregator-dev/aggregator/wal"
)

// The feed lists every unique event once, in seq order (dense, from 1),
// per topic in arrival order whatever the timestamps; /events carries the
// same seq for the same event; seqs stay the same across a restart.
func TestFeedOrderOnRealWiring(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	var arrival []string // topic/id of unique events in publish order
	seen := map[string]bool{}
	for i := range 60 {
		var batch []any
		for j := range 5 {
			topic := fmt.Sprint("t", (i+j)%3)
			e := makeEvent((i*5+j)%170, topic) // repeats: duplicates
			// Later events get earlier timestamps.
			e["timestamp"] = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Duration(i*5+j) * time.Minute).Format(time.RFC3339)
			batch = append(batch, e)
			if k := topic + "/" + e["event_id"].(string); !seen[k] {
				seen[k] = true
				arrival = append(arrival, k)
			}
		}
		ts.publish(batch)
	}
	st := ts.drain(10 * time.Second)
	if st.LastSeq != uint64(len(arrival)) || st.UniqueProcessed != st.LastSeq {
		t.Fatalf("stats %+v: last_seq must be the %d unique events", st, len(arrival))
	}
	seqOf := map[string]uint64{}
	for i, e := range ts.feedAll("") {
		k := e.Topic + "/" + e.EventID
		if e.Seq != uint64(i+1) || k != arrival[i] {
			t.Fatalf("feed position %d: seq %d %s, want seq %d %s", i, e.Seq, k, i+1, arrival[i])
		}
		seqOf[k] = e.Seq
	}
	for _, topic := range []string{"t0", "t1", "t2"} {
		var want []string
		for _, k := range arrival {
			if strings.HasPrefix(k, topic+"/") {
				want = append(want, k)
			}
		}
		got := ts.feedAll(topic)
		if len(got) != len(want) {
			t.Fatalf("topic %s: %d events in the feed, want %d", topic, len(got), len(want))
		}
		for i, e := range got {
			if k := e.Topic + "/" + e.EventID; k != want[i] {
				t.Fatalf("topic %s position %d: %s, want %s (arrival order)", topic, i, k, want[i])
			}
		}
	}
	for _, e := range ts.listAll("") {
		if seqOf[e.Topic+"/"+e.EventID] != e.Seq {
			t.Fatalf("/events gives %s seq %d, the feed %d", e.EventID, e.Seq, seqOf[e.Topic+"/"+e.EventID])
		}
	}
	ts.stop(t)
	ts2 := startServer(t, dir, nil)
	for _, e := range ts2.feedAll("") {
		if seqOf[e.Topic+"/"+e.EventID] != e.Seq {
			t.Fatalf("after a restart %s has seq %d, was %d", e.EventID, e.Seq, seqOf[e.Topic+"/"+e.EventID])
		}
	}
	for _, q := range []string{"after=x", "after=-1", "limit=0", "limit=10001", "wait=61s", "wait=-1s", "wait=x",
		"topic=" + strings.Repeat("t", 256)} {
		if status, body := ts2.do(http.MethodGet, "/feed?"+q, "", nil); status != http.StatusBadRequest || !strings.Contains(string(body), `"error"`) {
			t.Errorf("feed?%s: %d %s, want 400 with a JSON error", q, status, body)
		}
	}
}

// A long-poll with nothing after its seq is woken by the next applied event
// (of its topic); one that nothing wakes answers an empty page at its wait.
func TestLongPoll(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ts.publish(makeEvent(1, "a"))
	ts.drain(10 * time.Second)
	type reply struct {
		p   feedPage
		err error
	}
	replies := make(chan reply, 1)
	go func() {
		status, body, err := ts.try(http.MethodGet, "/feed?topic=a&after=1&wait=30s", "", nil)
		var p feedPage
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("status %d: %s", status, body)
		}
		if err == nil {
			mustDecode(t, body, &p)
		}
		replies <- reply{p, err}
	}()
	if poll.Within(200*time.Millisecond, func() bool { return len(replies) > 0 }) {
		t.Fatalf("the long-poll answered with nothing to send: %+v", <-replies)
	}
	ts.publish(makeEvent(2, "b")) // another topic: no reply yet
	ts.drain(10 * time.Second)
	if poll.Within(100*time.Millisecond, func() bool { return len(replies) > 0 }) {
		t.Fatalf("an event of another topic answered the long-poll: %+v", <-replies)
	}
	ts.publish(makeEvent(3, "a"))
	select {
	case r := <-replies:
		if r.err != nil || len(r.p.Events) != 1 || r.p.Events[0].EventID != "id-3" || r.p.NextAfter != r.p.Events[0].Seq {
			t.Fatalf("woken long-poll: %+v %v", r.p, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll was not woken by the event")
	}
	start := time.Now()
	p := ts.feed("after=3&wait=150ms")
	if len(p.Events) != 0 || p.NextAfter != 3 || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("timed-out long-poll: %+v after %v", p, time.Since(start))
	}
}

// sseEvent is one message of an event stream.
type sseEvent struct {
	id   uint64
	name string
	data string
}

// readSSE reads messages from an event stream until n events arrived.
func readSSE(tb testing.TB, r *bufio.Reader, n int) []sseEvent {
	tb.Helper()
	var out []sseEvent
	var cur sseEvent
	for len(out) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			tb.Fatalf("event stream after %d events: %v", len(out), err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if cur.name != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id, _ = strconv.ParseUint(line[4:], 10, 64)
		case strings.HasPrefix(line, "event: "):
			cur.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return out
}

// openSSE opens GET /feed as an event stream.
func openSSE(tb testing.TB, ts *testServer, query string, lastID string) (*bufio.Reader, func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.base+"/feed?"+query, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		tb.Fatalf("event stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return bufio.NewReader(resp.Body), func() { cancel(); resp.Body.Close() }
}

// An event stream sends the events after its start, then new ones as they
// are applied; a client that reconnects with Last-Event-ID gets exactly the
// ones after it: nothing lost, nothing repeated.
func TestSSEResume(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	var batch []any
	for i := range 10 {
		batch = append(batch, makeEvent(i, "s"))
	}
	ts.publish(batch)
	r, closeStream := openSSE(t, ts, "after=0", "")
	got := readSSE(t, r, 5)
	closeStream()
	for i, e := range got {
		if e.id != uint64(i+1) || e.name != "event" || !strings.Contains(e.data, fmt.Sprintf(`"seq":%d`, i+1)) {
			t.Fatalf("message %d: %+v", i, e)
		}
	}
	r, closeStream = openSSE(t, ts, "after=0", "5") // Last-Event-ID wins over after
	defer closeStream()
	got = readSSE(t, r, 5)
	batch = nil
	for i := range 5 {
		batch = append(batch, makeEvent(100+i, "s"))
	}
	ts.publish(batch)
	got = append(got, readSSE(t, r, 5)...)
	for i, e := range got {
		if e.id != uint64(6+i) {
			t.Fatalf("after reconnecting: message %d has id %d, want %d", i, e.id, 6+i)
		}
	}
	if !strings.Contains(got[9].data, `"event_id":"id-104"`) {
		t.Fatalf("last message %s", got[9].data)
	}
}

// Named cursors over HTTP: created once, acks move forward only and never
// past the last seq, the next page does not move the cursor, unknown names
// are 404.
func TestConsumersOnRealWiring(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	var batch []any
	for i := range 6 {
		batch = append(batch, makeEvent(i, []string{"x", "y"}[i%2]))
	}
	ts.publish(batch)
	ts.drain(10 * time.Second)
	expect := func(method, path, body string, status int, contains string) {
		t.Helper()
		got, reply := ts.do(method, path, "application/json", []byte(body))
		if got != status || !strings.Contains(string(reply), contains) {
			t.Fatalf("%s %s %s: %d %s, want %d with %q", method, path, body, got, reply, status, contains)
		}
	}
	expect(http.MethodPut, "/consumers/job-x", `{"topic":"x"}`, http.StatusCreated, `"pending":3`)
	expect(http.MethodPut, "/consumers/job-x", `{"topic":"x"}`, http.StatusOK, `"acked":0`)
	expect(http.MethodPut, "/consumers/job-x", `{"topic":"y"}`, http.StatusConflict, `"error"`)
	expect(http.MethodPut, "/consumers/all", ``, http.StatusCreated, `"pending":6`)
	expect(http.MethodGet, "/consumers/job-x/next?limit=2", "", http.StatusOK, `"next_after":3`)
	expect(http.MethodGet, "/consumers/job-x", "", http.StatusOK, `"acked":0`) // next does not advance
	expect(http.MethodPost, "/consumers/job-x/ack", `{"seq":3}`, http.StatusOK, `"pending":1`)
	expect(http.MethodPost, "/consumers/job-x/ack", `{"seq":1}`, http.StatusOK, `"acked":3`)
	expect(http.MethodPost, "/consumers/job-x/ack", `{"seq":7}`, http.StatusBadRequest, `after the last seq`)
	expect(http.MethodPost, "/consumers/job-x/ack", `{}`, http.StatusBadRequest, `"error"`)
	expect(http.MethodGet, "/consumers/job-x/next", "", http.StatusOK, `"event_id":"id-4"`)
	expect(http.MethodGet, "/consumers/nobody", "", http.StatusNotFound, `"error"`)
	expect(http.MethodGet, "/consumers/bad%20name", "", http.StatusBadRequest, `"error"`)
	expect(http.MethodGet, "/consumers/"+strings.Repeat("n", 65), "", http.StatusBadRequest, `"error"`)
	expect(http.MethodDelete, "/consumers/job-x", "", http.StatusOK, `"deleted":true`)
	expect(http.MethodPost, "/consumers/job-x/ack", `{"seq":3}`, http.StatusNotFound, `"error"`)
}

// wait=applied answers with each event's verdict in request order: new with
// its seq, duplicate with the seq of the event it duplicates, within one
// batch too; when the consumer is too slow, 202 with the offsets only.
func TestPublishVerdicts(t *testing.T) {
	var hold atomic.Bool
	release := make(chan struct{})
	seam := func(l *wal.Log, _ *dedup.Store) dedup.Source {
		return gatedSource{Log: l, gate: func() {
			if hold.Load() {
				<-release
			}
		}}
	}
	ts := startServerWithSeam(t, t.TempDir(), func(c *Config) { c.ApplyWait = 300 * time.Millisecond }, seam)
	ts.waitReady(30 * time.Second)
	ts.publish(makeEvent(1, "v"))
	ts.drain(10 * time.Second)
	body := mustJSON(t, []any{makeEvent(2, "v"), makeEvent(1, "v"), makeEvent(2, "v"), makeEvent(3, "v")})
	status, reply := ts.do(http.MethodPost, "/publish?wait=applied", "application/json", body)
	want := `"results":[{"offset":2,"status":"new","seq":2},{"offset":3,"status":"duplicate","seq":1},` +
		`{"offset":4,"status":"duplicate","seq":2},{"offset":5,"status":"new","seq":3}]`
	if status != http.StatusOK || !strings.Contains(string(reply), want) {
		t.Fatalf("wait=applied: %d %s, want 200 with %s", status, reply, want)
	}
	hold.Store(true)
	status, reply = ts.do(http.MethodPost, "/publish?wait=applied", "application/json", mustJSON(t, makeEvent(4, "v")))
	if status != http.StatusAccepted || !strings.Contains(string(reply), `"last_offset":6`) || strings.Contains(string(reply), "results") {
		t.Fatalf("past --apply-wait: %d %s, want 202 with the offsets only", status, reply)
	}
	hold.Store(false)
	close(release)
	if status, _ := ts.do(http.MethodPost, "/publish?wait=soon", "application/json", body); status != http.StatusBadRequest {
		t.Fatalf("wait=soon: %d, want 400", status)
	}
}

// A page stops at --max-page-bytes (at least one event) and is streamed:
// concurrent readers of pages of large events hold a bounded amount of
// memory, not every page whole.
func TestPageByteBudget(t *testing.T) {
	const payload = 512 << 10
	ts := startServer(t, t.TempDir(), func(c *Config) { c.MaxPageBytes = 2 << 20 })
	pad := strings.Repeat("x", payload)
	for i := range 40 {
		e := makeEvent(i, "big")
		e["payload"] = map[string]any{"pad": pad}
		ts.publish(e)
	}
	ts.drain(30 * time.Second)
	p := ts.feed("topic=big&limit=10000")
	if len(p.Events) != 3 || p.NextAfter != 3 {
		t.Fatalf("a feed page of %d events (next_after %d), want 3 of 512 KiB under 2 MiB", len(p.Events), p.NextAfter)
	}
	if all := ts.listAll("big"); len(all) != 40 {
		t.Fatalf("listed %d of 40 events page by page", len(all))
	}
	if one := ts.feed("topic=big&limit=1&after=39"); len(one.Events) != 1 {
		t.Fatalf("a page holds at least one event: %d", len(one.Events))
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var readers sync.WaitGroup
	for range 8 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range 3 {
				resp, err := ts.http.Get(ts.base + "/events?topic=big&limit=10000")
				if err != nil {
					t.Error(err)
					return
				}
				n, err := slowRead(resp.Body) // not held: only the server's memory counts
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || n < 3*payload {
					t.Errorf("events: %d, %d bytes, %v", resp.StatusCode, n, err)
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	sampler.Wait()
	// Built whole, 8 pages of all 40 events would take over 160 MiB; the
	// server holds a chunk (with one event) per slow reader.
	grown := int64(peak.Load()) - int64(before.HeapInuse)
	if grown > 48<<20 {
		t.Fatalf("heap grew by %d MiB for 8 readers of 2 MiB pages (20 MiB of events)", grown>>20)
	}
	t.Logf("heap grew by %.1f MiB during 24 pages of 2 MiB", float64(grown)/(1<<20))
}

// slowRead reads r to its end in 64 KiB pieces with a pause between them,
// so that the server waits on the reader, and returns the bytes read.
func slowRead(r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := io.ReadFull(r, buf)
		n += int64(k)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// /stats lists a bounded number of topics, with the total count; /topics
// pages through all of them with counts; --max-topics refuses a new topic
// past the bound with 429 and writes nothing.
func TestTopicsPagingAndBound(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *Config) { c.MaxStatsTopics = 10; c.MaxTopics = 250 })
	var batch []any
	for i := range 250 {
		batch = append(batch, makeEvent(i, fmt.Sprintf("topic-%03d", i)))
	}
	batch = append(batch, makeEvent(0, "topic-000"))
	ts.publish(batch)
	st := ts.drain(10 * time.Second)
	if len(st.Topics) != 10 || !st.TopicsTruncated || st.TopicCount != 250 || st.TopicCounts["topic-000"] != 1 {
		t.Fatalf("stats: %d topics listed (truncated %v), count %d, topic-000 %d", len(st.Topics), st.TopicsTruncated,
			st.TopicCount, st.TopicCounts["topic-000"])
	}
	var all []string
	cursor := ""
	for pages := 0; pages < 10; pages++ {
		q := "/topics?limit=100"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		status, body := ts.do(http.MethodGet, q, "", nil)
		if status != http.StatusOK {
			t.Fatalf("%s: %d %s", q, status, body)
		}
		var p struct {
			Topics []struct {
				Topic string `json:"topic"`
				Count uint64 `json:"count"`
			} `json:"topics"`
			NextCursor *string `json:"next_cursor"`
		}
		mustDecode(t, body, &p)
		for _, tc := range p.Topics {
			if tc.Count != 1 {
				t.Fatalf("topic %s count %d", tc.Topic, tc.Count)
			}
			all = append(all, tc.Topic)
		}
		if p.NextCursor == nil {
			break
		}
		cursor = *p.NextCursor
	}
	if len(all) != 250 || all[0] != "topic-000" || all[249] != "topic-249" {
		t.Fatalf("topics paged: %d (%v ... )", len(all), all[:min(3, len(all))])
	}
	if status, _ := ts.do(http.MethodGet, "/topics?cursor=%%%", "", nil); status != http.StatusBadRequest {
		t.Fatalf("bad cursor: %d", status)
	}
	// Known topics still publish; a new one is refused.
	ts.publish(makeEvent(999, "topic-001"))
	status, body := ts.do(http.MethodPost, "/publish", "application/json", mustJSON(t, []any{makeEvent(1, "topic-001"), makeEvent(1, "new")}))
	if status != http.StatusTooManyRequests || !strings.Contains(string(body), "topics") {
		t.Fatalf("a new topic past --max-topics: %d %s", status, body)
	}
	if st := ts.drain(10 * time.Second); st.Received != 252 {
		t.Fatalf("received %d, want 252: the refused request wrote something", st.Received)
	}
}
