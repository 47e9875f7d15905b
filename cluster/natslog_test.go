package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/aggregator-dev/aggregator/internal/metrictest"
	"github.com/aggregator-dev/aggregator/natslog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

func openLog(tb testing.TB, o natslog.Options) *natslog.Log {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 20 * time.Second
	}
	l, err := natslog.Open(ctx, &o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

func records(prefix string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s-%d", prefix, i)
	}
	return out
}

// readAll reads from..to through the Source side, as the consumer does.
func readAll(tb testing.TB, l *natslog.Log, from, to uint64) map[uint64]string {
	tb.Helper()
	got := map[uint64]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	next := from
	for next <= to {
		if err := l.Wait(ctx, next-1); err != nil {
			tb.Fatalf("wait after %d: %v", next-1, err)
		}
		err := l.Read(next, 1000, func(off uint64, data []byte) error {
			if off != next {
				return fmt.Errorf("read offset %d, want %d", off, next)
			}
			got[off] = string(data)
			next++
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return got
}

func TestAppendAndReadInOrder(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, NodeID: "a", MaxBatch: 1000})
	ctx := context.Background()
	var want []string
	for _, n := range []int{1, 7, 1000, 2500} { // a plain publish, batches, a split request
		recs := records(fmt.Sprint("r", n), n)
		first, last, err := l.Append(ctx, recs)
		if err != nil {
			t.Fatalf("append %d: %v", n, err)
		}
		if last-first+1 != uint64(n) || first != uint64(len(want))+1 {
			t.Fatalf("append %d: offsets %d..%d after %d records", n, first, last, len(want))
		}
		for _, r := range recs {
			want = append(want, string(r))
		}
	}
	if l.LastOffset() != uint64(len(want)) {
		t.Fatalf("last offset %d, want %d", l.LastOffset(), len(want))
	}
	got := readAll(t, l, 1, uint64(len(want)))
	for i, w := range want {
		if got[uint64(i+1)] != w {
			t.Fatalf("offset %d: %q, want %q", i+1, got[uint64(i+1)], w)
		}
	}
	if err := l.Writable(); err != nil {
		t.Fatal(err)
	}
}

func TestBatchOverTheServersLimitIsAnError(t *testing.T) {
	srv := runNATS(t, 1) // max_msgs 10,000
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, MaxBatch: 20_000})
	_, _, err := l.Append(context.Background(), records("big", 10_001))
	if err == nil || event.KindOf(err) != event.Internal {
		t.Fatalf("a batch over the servers' max_msgs: %v (kind %v), want an internal error", err, event.KindOf(err))
	}
	if l.LastOffset() != 0 {
		t.Fatalf("a refused batch stored records: last offset %d", l.LastOffset())
	}
	// The same with --nats-max-batch within the limit: one atomic batch.
	l2 := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, MaxBatch: 10_000})
	if first, last, err := l2.Append(context.Background(), records("big", 10_000)); err != nil || first != 1 || last != 10_000 {
		t.Fatalf("10,000 records in one batch: %d..%d, %v", first, last, err)
	}
}

func TestReadBufferIsBounded(t *testing.T) {
	srv := runNATS(t, 1)
	reg := prometheus.NewRegistry()
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, ReadBuffer: 10, ReadBufferBytes: 1 << 20, Registerer: reg})
	if _, _, err := l.Append(context.Background(), records("buf", 100)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Wait(ctx, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the reader run into the bound
	if read := metrictest.Values(t, reg)["aggregator_nats_read_records_total"]; read != 10 {
		t.Fatalf("read %v records ahead of the consumer, want the bound 10", read)
	}
	got := readAll(t, l, 1, 100) // releasing as it goes
	if len(got) != 100 || got[100] != "buf-99" {
		t.Fatalf("read %d records", len(got))
	}
	// And in bytes: one record larger than the bound is still read.
	l2 := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, ReadBufferBytes: 1})
	if got := readAll(t, l2, 1, 3); len(got) != 3 {
		t.Fatalf("read %d records with a 1-byte bound", len(got))
	}
}

func TestReaderStartsAfterCheckpoint(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1})
	if _, _, err := l.Append(context.Background(), records("x", 50)); err != nil {
		t.Fatal(err)
	}
	l2 := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1})
	got := readAll(t, l2, 31, 50) // an index whose checkpoint is 30
	if len(got) != 20 || got[31] != "x-30" || got[50] != "x-49" {
		t.Fatalf("read %d records from 31: %q .. %q", len(got), got[31], got[50])
	}
}

func TestReadingAgainRestartsTheReader(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1})
	if _, _, err := l.Append(context.Background(), records("again", 50)); err != nil {
		t.Fatal(err)
	}
	readAll(t, l, 1, 50)
	// A consumer that lost its chunk reads from its checkpoint again.
	if got := readAll(t, l, 11, 50); got[11] != "again-10" || len(got) != 40 {
		t.Fatalf("read again from 11: %d records, %q first", len(got), got[11])
	}
}

func TestPurgeBelowEveryNodesCheckpoint(t *testing.T) {
	srv := runNATS(t, 1)
	o := natslog.Options{URLs: urls(srv), Replicas: 1, PurgeInterval: 100 * time.Millisecond}
	o.NodeID = "a"
	a := openLog(t, o)
	o.NodeID = "b"
	b := openLog(t, o)
	// b has applied nothing: its entry (checkpoint 0) must be in the bucket
	// before a may purge, or a would purge what b has not read. (A node
	// without an entry holds nothing: a restart keeps its entry, a restore
	// is covered by the backup's pin.)
	_ = b.TruncateFront(1)
	if !eventually(10*time.Second, func() bool {
		cps, err := a.Checkpoints(context.Background())
		_, ok := cps["node.b"]
		return err == nil && ok
	}) {
		t.Fatal("b never reported its checkpoint")
	}
	if _, _, err := a.Append(context.Background(), records("p", 100)); err != nil {
		t.Fatal(err)
	}
	readAll(t, a, 1, 100)
	_ = a.TruncateFront(101) // a applied everything
	readAll(t, b, 1, 40)
	_ = b.TruncateFront(41) // b only up to 40
	if !eventually(10*time.Second, func() bool { return a.FirstOffset() == 41 && b.FirstOffset() == 41 }) {
		t.Fatalf("first offsets %d, %d: want 41 (purged below b's checkpoint 40)", a.FirstOffset(), b.FirstOffset())
	}
	time.Sleep(500 * time.Millisecond)
	if a.FirstOffset() != 41 {
		t.Fatalf("purged past the slowest node: first offset %d", a.FirstOffset())
	}
	cps, err := a.Checkpoints(context.Background())
	if err != nil || cps["node.a"] != 100 || cps["node.b"] != 40 {
		t.Fatalf("checkpoints %v, %v", cps, err)
	}
	got := readAll(t, b, 41, 100) // b goes on where it was
	if got[41] != "p-40" {
		t.Fatalf("b read %q at 41", got[41])
	}
}

// A pin (taken by GET /admin/backup) holds the purge at the checkpoint it
// was taken at until it is PinTTL old, then it is deleted and the purge
// moves on.
func TestPinHoldsPurgeUntilItExpires(t *testing.T) {
	srv := runNATS(t, 1)
	a := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, PurgeInterval: 100 * time.Millisecond,
		PinTTL: 2 * time.Second, NodeID: "a"})
	if _, _, err := a.Append(context.Background(), records("p", 100)); err != nil {
		t.Fatal(err)
	}
	readAll(t, a, 1, 40)
	_ = a.TruncateFront(41)
	if !eventually(10*time.Second, func() bool { return a.FirstOffset() == 41 }) {
		t.Fatalf("first offset %d, want 41", a.FirstOffset())
	}
	pinned, err := a.Pin(context.Background())
	if err != nil || pinned != 40 {
		t.Fatalf("Pin: %d, %v; want 40", pinned, err)
	}
	pinAt := time.Now()
	readAll(t, a, 41, 100)
	_ = a.TruncateFront(101)
	reported := func() bool {
		cps, err := a.Checkpoints(context.Background())
		return err == nil && cps["node.a"] == 100
	}
	if !eventually(10*time.Second, reported) {
		t.Fatal("node a never reported checkpoint 100")
	}
	if time.Since(pinAt) < 2*time.Second && a.FirstOffset() != 41 {
		t.Fatalf("purged to %d while the pin at 40 held", a.FirstOffset())
	}
	if !eventually(15*time.Second, func() bool { return a.FirstOffset() == 101 }) {
		t.Fatalf("first offset %d after the pin expired, want 101", a.FirstOffset())
	}
	if time.Since(pinAt) < 2*time.Second {
		t.Fatalf("the pin stopped holding after %v, before its TTL", time.Since(pinAt))
	}
	cps, err := a.Checkpoints(context.Background())
	if err != nil || len(cps) != 1 {
		t.Fatalf("checkpoints after the pin expired: %v, %v (want node.a only)", cps, err)
	}
}

func TestReaderRefusesPurgedRecords(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, PurgeInterval: -1})
	if _, _, err := l.Append(context.Background(), records("g", 20)); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), natslog.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(context.Background(), jetstream.WithPurgeSequence(11)); err != nil {
		t.Fatal(err)
	}
	// A node at checkpoint 5 needs 6..10, which are gone: it must stop,
	// not skip them.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = l.Wait(ctx, 5)
	if !errors.Is(err, natslog.ErrPurged) || event.KindOf(err) != event.Unavailable {
		t.Fatalf("wait after 5 on a stream purged below 11: %v, want ErrPurged", err)
	}
}

func TestFullStreamRefusesWith429(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, MaxBytes: 64 << 10})
	rec := [][]byte{make([]byte, 1000)}
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		_, _, err = l.Append(context.Background(), rec)
	}
	if !errors.Is(err, natslog.ErrOverloaded) || event.KindOf(err) != event.Overloaded {
		t.Fatalf("append to a full stream: %v, want ErrOverloaded (429)", err)
	}
	// A batch is refused whole.
	before := l.LastOffset()
	_, _, err = l.Append(context.Background(), records("b", 10))
	if !errors.Is(err, natslog.ErrOverloaded) || l.LastOffset() != before {
		t.Fatalf("batch on a full stream: %v, last offset %d -> %d", err, before, l.LastOffset())
	}
}

func TestUnavailableClusterIs503(t *testing.T) {
	srv := runNATS(t, 1)
	l := openLog(t, natslog.Options{URLs: urls(srv), Replicas: 1, PublishTimeout: time.Second, InfoInterval: 100 * time.Millisecond})
	srv[0].Shutdown()
	srv[0].WaitForShutdown()
	for _, n := range []int{1, 5} {
		_, _, err := l.Append(context.Background(), records("u", n))
		if event.KindOf(err) != event.Unavailable {
			t.Fatalf("append %d with the server down: %v (kind %v), want Unavailable", n, err, event.KindOf(err))
		}
	}
	if !eventually(5*time.Second, func() bool { return l.Writable() != nil }) {
		t.Fatal("Writable is nil with the server down")
	}
}

func eventually(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f()
}
