package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	var hundred []int
	for i := 100; i >= 1; i-- { // unsorted on purpose
		hundred = append(hundred, i)
	}
	cases := []struct {
		name               string
		in                 []time.Duration
		p50, p90, p99, max time.Duration
	}{
		{"empty", nil, 0, 0, 0, 0},
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"1..100", ms(hundred...), 50 * time.Millisecond, 90 * time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond},
		{"1..10", ms(3, 1, 2, 10, 9, 8, 7, 6, 5, 4), 5 * time.Millisecond, 9 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond},
		{"outlier", ms(1, 1, 1, 1, 1, 1, 1, 1, 1, 1000), time.Millisecond, time.Millisecond, time.Second, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := summarize(c.in)
			if s.P50 != c.p50 || s.P90 != c.p90 || s.P99 != c.p99 || s.Max != c.max || s.Count != len(c.in) {
				t.Fatalf("got %+v, want p50 %v p90 %v p99 %v max %v", s, c.p50, c.p90, c.p99, c.max)
			}
		})
	}
}

func TestBuildPlanDuplicatesInOtherRequests(t *testing.T) {
	cases := []genConfig{
		{Events: 1000, Batch: 1, Format: formatObject, PayloadSize: 256, DupFraction: 0.2, Topics: 3},
		{Events: 1000, Batch: 100, Format: formatArray, PayloadSize: 4096, DupFraction: 0.2, Topics: 4},
		{Events: 997, Batch: 10, Format: formatNDJSON, PayloadSize: 50, DupFraction: 0.5, Topics: 1},
		{Events: 500, Batch: 7, Format: formatArray, PayloadSize: 0, DupFraction: 0, Topics: 2},
		{Events: 100, Batch: 100, Format: formatArray, PayloadSize: 64, DupFraction: 0.2, Topics: 2}, // one request: no room
	}
	for _, cfg := range cases {
		t.Run(cfg.Format+"/"+strings.ReplaceAll(time.Duration(cfg.Batch).String(), "ns", ""), func(t *testing.T) {
			cfg.RunID, cfg.Seed = "run1", 42
			p, err := buildPlan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			wantDup := int(float64(cfg.Events)*cfg.DupFraction + 0.5)
			if len(p.requests) == 1 {
				wantDup = 0
			}
			if p.duplicates != wantDup || p.unique+p.duplicates != cfg.Events || p.events != cfg.Events {
				t.Fatalf("unique %d duplicates %d events %d; want duplicates %d of %d", p.unique, p.duplicates, p.events, wantDup, cfg.Events)
			}
			firstReq := map[key]int{} // key -> request of its first occurrence
			occurrences := map[key]int{}
			total := 0
			for ri, r := range p.requests {
				evs, err := parseBody(p.contentType, r.body)
				if err != nil {
					t.Fatalf("request %d: %v\n%s", ri, err, r.body)
				}
				if len(evs) != len(r.ids) || len(evs) > cfg.Batch {
					t.Fatalf("request %d: %d events, %d ids, batch %d", ri, len(evs), len(r.ids), cfg.Batch)
				}
				inReq := map[key]bool{}
				for i, e := range evs {
					k := key{e.Topic, e.EventID}
					if k != p.key(r.ids[i]) {
						t.Fatalf("request %d event %d: body %v, ids say %v", ri, i, k, p.key(r.ids[i]))
					}
					if inReq[k] {
						t.Fatalf("request %d carries %v twice", ri, k)
					}
					inReq[k] = true
					if fr, ok := firstReq[k]; ok && fr == ri {
						t.Fatalf("duplicate of %v in its original's request %d", k, ri)
					} else if !ok {
						firstReq[k] = ri
					}
					occurrences[k]++
					if len(e.Payload) != max(cfg.PayloadSize, len(appendPayload(nil, 0, r.ids[i]))) || !json.Valid(e.Payload) {
						t.Fatalf("payload of %d bytes, want %d: %s", len(e.Payload), cfg.PayloadSize, e.Payload)
					}
					if e.Source == "" || e.Timestamp == "" {
						t.Fatalf("incomplete event %+v", e)
					}
					total++
				}
				if ri == 0 && len(inReq) != len(evs) {
					t.Fatal("first request has duplicates")
				}
			}
			dups := 0
			for _, n := range occurrences {
				dups += n - 1
			}
			if total != cfg.Events || len(occurrences) != p.unique || dups != p.duplicates {
				t.Fatalf("bodies: %d events, %d distinct, %d repeats; plan says %d/%d/%d",
					total, len(occurrences), dups, cfg.Events, p.unique, p.duplicates)
			}
		})
	}
}

func TestBuildPlanRejects(t *testing.T) {
	good := genConfig{Events: 10, Batch: 1, Format: formatObject, Topics: 1, RunID: "r"}
	for name, mut := range map[string]func(*genConfig){
		"no events":    func(g *genConfig) { g.Events = 0 },
		"object batch": func(g *genConfig) { g.Batch = 2 },
		"bad format":   func(g *genConfig) { g.Format = "xml" },
		"dup 1":        func(g *genConfig) { g.DupFraction = 1 },
		"no topics":    func(g *genConfig) { g.Topics = 0 },
		"bad run id":   func(g *genConfig) { g.RunID = "a b" },
	} {
		g := good
		mut(&g)
		if _, err := buildPlan(g); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := buildPlan(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
}

func TestAckLogRoundTrip(t *testing.T) {
	p, err := buildPlan(genConfig{Events: 300, Batch: 10, Format: formatArray, Topics: 3, DupFraction: 0.3, RunID: "rt", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	a := newAckLog(&buf)
	var lines []byte
	want := map[key]struct{}{}
	for i := range p.requests {
		lines = appendAcks(lines[:0], p, &p.requests[i])
		a.write(lines)
		for _, id := range p.requests[i].ids {
			want[p.key(id)] = struct{}{}
		}
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	got, n, err := readAckLog(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != 300 || len(got) != p.unique || len(want) != p.unique {
		t.Fatalf("read %d lines, %d keys; want 300 lines, %d keys", n, len(got), p.unique)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Fatalf("%v lost in round trip", k)
		}
	}
	if _, _, err := readAckLog(strings.NewReader("t\te\nno-tab-here\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("malformed line: err = %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestAckLogWriteError(t *testing.T) {
	a := newAckLog(failWriter{})
	a.write([]byte("t\te\n"))
	if err := a.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Flush = %v, want the write error", err)
	}
}

func TestCheckTarget(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:8080", "http://127.0.0.1:1/"} {
		if _, err := checkTarget(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://localhost:8080", "http://10.0.0.1:80", "https://127.0.0.1:443",
		"http://127.0.0.1", "http://127.0.0.1:80/x", "http://127.0.0.2:80", "127.0.0.1:80"} {
		if _, err := checkTarget(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func publishTo(t *testing.T, base string, g genConfig, conc int, acks *ackLog) (*plan, *publishResult) {
	t.Helper()
	return publishWith(t, base, false, g, conc, acks)
}

func publishWith(t *testing.T, base string, raw bool, g genConfig, conc int, acks *ackLog) (*plan, *publishResult) {
	t.Helper()
	p, err := buildPlan(g)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(conc)
	t.Cleanup(c.CloseIdleConnections)
	pb := &publisher{client: c, base: base, raw: raw, plan: p, concurrency: conc, acks: acks}
	return p, pb.run(context.Background(), nil, time.Minute)
}

func TestPublishRecordsOnlyAcknowledged(t *testing.T) {
	for _, c := range []struct {
		format string
		raw    bool
	}{{formatArray, false}, {formatNDJSON, false}, {formatArray, true}, {formatNDJSON, true}} {
		format := c.format
		t.Run(fmt.Sprintf("%s/raw=%v", format, c.raw), func(t *testing.T) {
			fake, base := newFakeService(t)
			fake.mu.Lock()
			fake.failEvery = 7
			fake.mu.Unlock()
			var buf bytes.Buffer
			acks := newAckLog(&buf)
			p, res := publishWith(t, base, c.raw, genConfig{Events: 2000, Batch: 20, Format: format, Topics: 3,
				PayloadSize: 100, DupFraction: 0.2, RunID: "pub", Seed: 3}, 8, acks)
			if err := acks.Flush(); err != nil {
				t.Fatal(err)
			}
			failed := len(p.requests) / 7
			if res.Requests != len(p.requests) || res.RequestsOK != len(p.requests)-failed ||
				res.Status["200"] != res.RequestsOK || res.Status["503"] != failed {
				t.Fatalf("requests %d ok %d status %v; want %d requests, %d failed", res.Requests, res.RequestsOK, res.Status, len(p.requests), failed)
			}
			if res.Latency.Count != len(p.requests) || res.Latency.Max <= 0 || res.Latency.P50 > res.Latency.P99 {
				t.Fatalf("latency %+v", res.Latency)
			}
			acked, lines, err := readAckLog(&buf)
			if err != nil {
				t.Fatal(err)
			}
			want := map[key]bool{}
			events := 0
			for i, r := range p.requests {
				if res.Acked[i] {
					events += len(r.ids)
					for _, id := range r.ids {
						want[p.key(id)] = true
					}
				}
			}
			if lines != events || res.EventsAcked != events || len(acked) != len(want) {
				t.Fatalf("acklog %d lines %d keys, result %d events; want %d events %d keys", lines, len(acked), res.EventsAcked, events, len(want))
			}
			for k := range acked {
				if !want[k] {
					t.Fatalf("%v recorded but its request failed", k)
				}
			}
		})
	}
}

func TestPublishShortAckIsNotAcknowledged(t *testing.T) {
	fake, base := newFakeService(t)
	fake.mu.Lock()
	fake.enqueuedDelta = -1
	fake.mu.Unlock()
	var buf bytes.Buffer
	_, res := publishTo(t, base, genConfig{Events: 50, Batch: 5, Format: formatArray, Topics: 1, RunID: "s"}, 2, newAckLog(&buf))
	if res.RequestsOK != 0 || res.EventsAcked != 0 || !strings.Contains(res.FirstError, "enqueued 4 of 5") {
		t.Fatalf("ok %d acked %d first error %q", res.RequestsOK, res.EventsAcked, res.FirstError)
	}
}

func TestPublishTimeCap(t *testing.T) {
	_, base := newFakeService(t)
	p, err := buildPlan(genConfig{Events: 100, Batch: 1, Format: formatObject, Topics: 1, RunID: "cap"})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(1)
	defer c.CloseIdleConnections()
	pb := &publisher{client: c, base: base, raw: true, plan: p, concurrency: 1}
	res := pb.run(context.Background(), nil, time.Nanosecond)
	if res.Requests > 1 {
		t.Fatalf("%d requests started after the time cap", res.Requests)
	}
}

// verifyFake publishes a run to a fresh fake, applies mutate, and verifies.
func verifyFake(t *testing.T, mutate func(*fakeService, *plan)) *verifyReport {
	t.Helper()
	fake, base := newFakeService(t)
	var buf bytes.Buffer
	acks := newAckLog(&buf)
	g := genConfig{Events: 2500, Batch: 25, Format: formatArray, Topics: 3, PayloadSize: 16, DupFraction: 0.2, RunID: "v", Seed: 9}
	p, err := buildPlan(g)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		fake.mu.Lock() // the race detector sees no ordering through a raw socket
		mutate(fake, p)
		fake.mu.Unlock()
	}
	c := newClient(4)
	defer c.CloseIdleConnections()
	pb := &publisher{client: c, base: base, raw: true, plan: p, concurrency: 4, acks: acks}
	if res := pb.run(context.Background(), nil, time.Minute); res.EventsAcked != g.Events {
		t.Fatalf("acked %d of %d", res.EventsAcked, g.Events)
	}
	if err := acks.Flush(); err != nil {
		t.Fatal(err)
	}
	acked, _, err := readAckLog(&buf)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := verify(context.Background(), c, verifyConfig{Base: base, Acked: acked, PageSize: 97, Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Acked != p.unique {
		t.Fatalf("acked %d, want %d", rep.Acked, p.unique)
	}
	return rep
}

func TestVerify(t *testing.T) {
	t.Run("clean", func(t *testing.T) {
		rep := verifyFake(t, nil)
		if !rep.OK() || rep.Listed != rep.Acked || rep.Pages != (rep.Listed+96)/97 {
			t.Fatalf("clean run: %s", rep)
		}
	})
	t.Run("missing", func(t *testing.T) {
		rep := verifyFake(t, func(f *fakeService, p *plan) {
			f.loseKeys[p.key(5)] = true
			f.loseKeys[p.key(700)] = true
		})
		if rep.OK() || rep.Missing != 2 || rep.ListedTwice != 0 || !strings.Contains(rep.String(), "v-700") {
			t.Fatalf("lost two: %s", rep)
		}
	})
	t.Run("listed twice", func(t *testing.T) {
		rep := verifyFake(t, func(f *fakeService, p *plan) { f.listTwice = 10 })
		if rep.OK() || rep.ListedTwice != 1 || rep.Missing != 0 || rep.CountersAgree {
			t.Fatalf("listed twice: %s", rep)
		}
	})
	t.Run("counter mismatch", func(t *testing.T) {
		rep := verifyFake(t, func(f *fakeService, p *plan) { f.uniqueSkew = 1 })
		if rep.OK() || rep.CountersAgree || rep.Missing != 0 || rep.ListedTwice != 0 ||
			!strings.Contains(rep.String(), "unique_processed") {
			t.Fatalf("skewed counter: %s", rep)
		}
	})
}

func TestCLIPublishAndVerify(t *testing.T) {
	fake, base := newFakeService(t)
	ackPath := filepath.Join(t.TempDir(), "acklog")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"publish", "--target", base, "--events", "400", "--batch", "20",
		"--format", "ndjson", "--concurrency", "4", "--dup", "0.25", "--run-id", "cli", "--acklog", ackPath, "--json"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("publish exit %d: %s %s", code, out.String(), errb.String())
	}
	var s summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil || bytes.Count(out.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("want one JSON line, got %q (%v)", out.String(), err)
	}
	if s.EventsAcked != 400 || s.Duplicates != 100 || s.Status["200"] != 20 || s.EventsPerS <= 0 || s.LatencyMS.Max <= 0 {
		t.Fatalf("summary %+v", s)
	}
	fake.mu.Lock()
	received, duplicates := fake.received, fake.duplicates
	fake.mu.Unlock()
	if received != 400 || duplicates != 100 {
		t.Fatalf("service got %d events, %d duplicates", received, duplicates)
	}

	out.Reset()
	if code := run(context.Background(), []string{"verify", "--target", base, "--acklog", ackPath}, &out, &errb); code != exitOK {
		t.Fatalf("verify exit %d: %s %s", code, out.String(), errb.String())
	}
	fake.mu.Lock()
	fake.events = fake.events[1:] // lose one acknowledged event
	fake.mu.Unlock()
	out.Reset()
	if code := run(context.Background(), []string{"verify", "--target", base, "--acklog", ackPath}, &out, &errb); code != exitFail ||
		!strings.Contains(out.String(), "missing 1") {
		t.Fatalf("verify after loss: exit %d: %s", code, out.String())
	}
	if code := run(context.Background(), []string{"publish", "--target", "http://192.0.2.1:80"}, &out, &errb); code != exitUsage {
		t.Fatalf("non-local target: exit %d", code)
	}
	if _, err := os.Stat(ackPath); err != nil {
		t.Fatal(err)
	}
}

func TestBuildPlanSameRequest(t *testing.T) {
	p, err := buildPlan(genConfig{Events: 5000, Batch: 5000, Format: formatArray, Topics: 1, DupFraction: 0.2,
		RunID: "stress", Seed: 5, SameRequest: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.requests) != 1 || p.unique != 4000 || p.duplicates != 1000 {
		t.Fatalf("%d requests, %d unique, %d duplicates; want 1, 4000, 1000", len(p.requests), p.unique, p.duplicates)
	}
	evs, err := parseBody(p.contentType, p.requests[0].body)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[key]int{}
	for _, e := range evs {
		seen[key{e.Topic, e.EventID}]++
	}
	for k, n := range seen {
		if n > 2 {
			t.Fatalf("%v appears %d times", k, n)
		}
	}
	if len(evs) != 5000 || len(seen) != 4000 {
		t.Fatalf("%d events, %d distinct", len(evs), len(seen))
	}
}

func TestVerifyStopsOnRepeatedCursor(t *testing.T) {
	fake, base := newFakeService(t)
	_, res := publishTo(t, base, genConfig{Events: 100, Batch: 10, Format: formatArray, Topics: 1, RunID: "loop"}, 2, nil)
	if res.EventsAcked != 100 {
		t.Fatalf("acked %d", res.EventsAcked)
	}
	fake.mu.Lock()
	fake.stuckCursor = true
	fake.mu.Unlock()
	c := newClient(1)
	defer c.CloseIdleConnections()
	_, err := verify(context.Background(), c, verifyConfig{Base: base, PageSize: 10})
	if err == nil || !strings.Contains(err.Error(), "returned twice") {
		t.Fatalf("err = %v, want a repeated-cursor error", err)
	}
}

func TestPublishCancelUnblocks(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			fake, base := newFakeService(t)
			hang := make(chan struct{})
			defer close(hang)
			fake.mu.Lock()
			fake.hang = hang
			fake.mu.Unlock()
			p, err := buildPlan(genConfig{Events: 40, Batch: 1, Format: formatObject, Topics: 1, RunID: "hang"})
			if err != nil {
				t.Fatal(err)
			}
			c := newClient(4)
			defer c.CloseIdleConnections()
			pb := &publisher{client: c, base: base, raw: raw, plan: p, concurrency: 4}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan *publishResult, 1)
			go func() { done <- pb.run(ctx, nil, time.Minute) }()
			deadline := time.Now().Add(10 * time.Second)
			for fake.requestsSeen() < 1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			cancel()
			select {
			case res := <-done:
				if res.RequestsOK != 0 || res.Requests > 4 || res.Status[statusTransportError] != res.Requests {
					t.Fatalf("after cancel: %d ok of %d, status %v", res.RequestsOK, res.Requests, res.Status)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("run did not return after its context was cancelled")
			}
		})
	}
}

// TestPublishRate: with a rate, the run is paced open loop: 20 requests
// of 10 events at 2,000 events/s take at least 19 intervals of 5 ms.
func TestPublishRate(t *testing.T) {
	_, base := newFakeService(t)
	p, err := buildPlan(genConfig{Events: 200, Batch: 10, Format: formatArray, PayloadSize: 16, Topics: 2, Seed: 3, RunID: "rate"})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(4)
	t.Cleanup(c.CloseIdleConnections)
	pb := &publisher{client: c, base: base, raw: true, plan: p, concurrency: 4, rate: 2000}
	res := pb.run(context.Background(), nil, time.Minute)
	if res.EventsAcked != 200 || res.Elapsed < 19*5*time.Millisecond {
		t.Fatalf("paced run: %d events acknowledged in %v, want 200 in at least 95ms", res.EventsAcked, res.Elapsed)
	}
}
