package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A stamped body carries the send time in every payload, at the payload
// size asked for, and stays valid JSON.
func TestStampedBodies(t *testing.T) {
	p, err := buildPlan(genConfig{Events: 6, Batch: 3, Format: formatArray, PayloadSize: 256, Topics: 2,
		RunID: "st", Seed: 1, Stamp: true})
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Unix(1700000000, 123456789)
	for _, r := range p.requests {
		r.stamp(sent)
		var evs []struct {
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(r.body, &evs); err != nil {
			t.Fatalf("stamped body is not JSON: %v\n%s", err, r.body)
		}
		for _, e := range evs {
			if len(e.Payload) != 256 {
				t.Fatalf("payload of %d bytes, want 256: %s", len(e.Payload), e.Payload)
			}
			if at, ok := sentAt(e.Payload); !ok || !at.Equal(sent) {
				t.Fatalf("sent at %v (%v), want %v", at, ok, sent)
			}
		}
	}
}

// consume follows the real server's feed in each mode and sees every
// published unique event once, with its publish-to-delivery latency.
func TestConsumeCommand(t *testing.T) {
	bin, failure := buildBinary(t, "../aggregator", "aggregator")
	if failure != "" {
		t.Skipf("cmd/aggregator does not build: %s", failure)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := startServer(bin, addr, filepath.Join(t.TempDir(), "data"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.kill()
	base := "http://" + addr
	if _, err := waitReady(context.Background(), newClient(1), base, srv, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"publish", "--target", base, "--events", "500", "--batch", "50",
		"--dup", "0.2", "--stamp"}, &out, &errb); code != exitOK {
		t.Fatalf("publish: exit %d: %s", code, errb.String())
	}
	for _, mode := range []string{followPoll, followSSE, followCursor} {
		out.Reset()
		args := []string{"consume", "--target", base, "--mode", mode, "--from", "start", "--events", "400",
			"--duration", "30s", "--json"}
		if code := run(context.Background(), args, &out, &errb); code != exitOK {
			t.Fatalf("consume %s: exit %d: %s", mode, code, errb.String())
		}
		var rep consumeReport
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("consume %s: %v: %s", mode, err, out.String())
		}
		if rep.Events != 400 || rep.Stamped != 400 || rep.LastSeq != 400 || rep.Latency == nil || rep.Latency.P50 <= 0 {
			t.Fatalf("consume %s: %+v", mode, rep)
		}
	}
	// The cursor was acknowledged to the last seq: nothing is pending.
	c := newClient(1)
	defer c.CloseIdleConnections()
	resp, err := c.Get(base + "/consumers/loadgen")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"acked":400`) || !strings.Contains(string(body), `"pending":0`) {
		t.Fatalf("cursor after consume: %s", body)
	}
}
