package dedup

import (
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/bits-and-blooms/bloom/v3"
	bolt "go.etcd.io/bbolt"
)

var (
	bench10M   = flag.Bool("dedup.bench10m", false, "also run the 10M-key benchmarks (slow: builds a 10M-key fixture)")
	benchChunk = flag.Int("dedup.chunk", DefaultChunkEntries, "entries per Apply in BenchmarkApply")
)

// Benchmark fixtures: databases with n keys stored, built once per test
// process (only when a benchmark asks for them) and removed by TestMain.
var fixtures struct {
	mu    sync.Mutex
	dir   string
	paths map[int]string
}

func removeFixtures() {
	fixtures.mu.Lock()
	defer fixtures.mu.Unlock()
	if fixtures.dir != "" {
		_ = os.RemoveAll(fixtures.dir)
	}
}

// benchEvent is the i-th event of the synthetic workload: 16 topics,
// random 16-hex-digit event IDs (no locality in the seen set), timestamps
// one millisecond apart, an ~90-byte payload.
func benchEvent(i uint64) event.Event {
	z := (i + 1) * 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z ^= z >> 27
	var idb [8]byte
	for j := range idb {
		idb[j] = byte(z >> (8 * j))
	}
	return event.Event{
		Topic:     fmt.Sprintf("topic-%02d", z>>60),
		EventID:   hex.EncodeToString(idb[:]),
		Timestamp: baseTime.Add(time.Duration(i) * time.Millisecond),
		Source:    "bench",
		Payload:   []byte(fmt.Sprintf(`{"user":"u-%d","amount":%d,"note":"lorem ipsum dolor sit amet consectetur"}`, i%10000, i%997)),
	}
}

// fixture returns the path of a database holding keys 0..n-1 of benchEvent.
func fixture(b *testing.B, n int) string {
	b.Helper()
	fixtures.mu.Lock()
	defer fixtures.mu.Unlock()
	if p, ok := fixtures.paths[n]; ok {
		return p
	}
	if fixtures.dir == "" {
		dir, err := os.MkdirTemp("", "dedup-bench-")
		if err != nil {
			b.Fatal(err)
		}
		fixtures.dir, fixtures.paths = dir, map[int]string{}
	}
	path := filepath.Join(fixtures.dir, fmt.Sprintf("keys-%d.db", n))
	start := time.Now()
	s, err := Open(path, &Options{ExpectedKeys: uint(n), noSync: true})
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 50_000
	es := make([]Entry, 0, chunk)
	for i := range uint64(n) {
		es = append(es, Entry{Offset: i + 1, Event: benchEvent(i)})
		if len(es) == chunk || i == uint64(n-1) {
			if _, err := s.Apply(es); err != nil {
				b.Fatal(err)
			}
			es = es[:0]
		}
	}
	if err := s.db.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b.Logf("fixture: %d keys, %d MiB, built in %v, %d runs", n, fi.Size()>>20, time.Since(start).Round(time.Millisecond), len(s.runs))
	fixtures.paths[n] = path
	return path
}

// copyFixture copies the n-key fixture into a fresh directory.
func copyFixture(b *testing.B, n int) string {
	b.Helper()
	src := fixture(b, n)
	dst := filepath.Join(b.TempDir(), "index.db")
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	return dst
}

func benchSizes() []int {
	sizes := []int{100_000, 1_000_000}
	if *bench10M {
		sizes = append(sizes, 10_000_000)
	}
	return sizes
}

// BenchmarkApply measures Apply throughput (durable commits, chunks of
// -dedup.chunk entries, default DefaultChunkEntries) on a database that
// already holds `keys` keys; dup% of the entries are keys already stored,
// drawn at random (so each is confirmed by a lookup in the seen set).
// events/cpu-s divides by the CPU time of the whole process (GC included)
// instead of wall time: the rate one free core would give, without the
// fdatasync waits and without other load on the machine.
func BenchmarkApply(b *testing.B) {
	for _, keys := range benchSizes() {
		for _, dup := range []int{0, 20, 90} {
			b.Run(fmt.Sprintf("keys=%s/dup=%d%%", human(keys), dup), func(b *testing.B) {
				benchApply(b, keys, dup, &Options{ExpectedKeys: uint(keys)})
			})
		}
	}
}

// BenchmarkApplyRetention is BenchmarkApply at 20% duplicates with every
// topic bounded to its share of the stored keys (--retain-events): each
// chunk expires about as many events as it stores, in its transaction.
// Compare with BenchmarkApply/keys=*/dup=20%.
func BenchmarkApplyRetention(b *testing.B) {
	for _, keys := range benchSizes() {
		b.Run(fmt.Sprintf("keys=%s/dup=20%%", human(keys)), func(b *testing.B) {
			perTopic := uint64(keys / 16) // benchEvent spreads the keys over 16 topics
			benchApply(b, keys, 20, &Options{ExpectedKeys: uint(keys), Retention: event.Retention{Events: perTopic}})
		})
	}
}

// benchApply runs one cell of BenchmarkApply with the store options opts.
func benchApply(b *testing.B, keys, dup int, opts *Options) {
	path := copyFixture(b, keys)
	s, err := Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// With retention, expire what the fixture holds past the bounds first:
	// the steady state is measured, not the catch-up.
	for more := true; more; {
		if more, err = s.Maintain(); err != nil {
			b.Fatal(err)
		}
	}
	expired0 := s.expired.Load()
	// The whole workload is generated (and its garbage collected)
	// before the clock starts: only Apply is measured.
	rng := rand.New(rand.NewPCG(uint64(keys), uint64(dup)))
	next := uint64(keys) // next new key
	off := s.Checkpoint() + 1
	all := make([]Entry, b.N)
	for i := range all {
		var e event.Event
		if rng.IntN(100) < dup {
			e = benchEvent(rng.Uint64N(uint64(keys)))
		} else {
			e = benchEvent(next)
			next++
		}
		all[i] = Entry{Offset: off, Event: e}
		off++
	}
	runtime.GC()
	var unique, dups int
	cpu0 := cpuTime()
	b.ResetTimer()
	for done := 0; done < b.N; {
		es := all[done:min(done+*benchChunk, b.N)]
		res, err := s.Apply(es)
		if err != nil {
			b.Fatal(err)
		}
		unique += res.Unique
		dups += res.Duplicates
		done += len(es)
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if unique+dups != b.N {
		b.Fatalf("%d unique + %d duplicates != %d", unique, dups, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "events/cpu-s")
	b.ReportMetric(float64(s.expired.Load()-expired0)/float64(b.N), "expired/event")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkOpen measures Open of a database holding `keys` keys, until the
// bloom filters are ready: loaded from the snapshot of a clean Close, or
// rebuilt by scanning the seen set (after a crash); with the file in the
// page cache (warm) or evicted from it before each Open (cold).
func BenchmarkOpen(b *testing.B) {
	for _, keys := range benchSizes()[1:] {
		for _, from := range []string{"snapshot", "scan"} {
			for _, cache := range []string{"warm", "cold"} {
				b.Run(fmt.Sprintf("keys=%s/%s/%s", human(keys), from, cache), func(b *testing.B) {
					path := copyFixture(b, keys)
					b.ResetTimer()
					for range b.N {
						b.StopTimer()
						if from == "scan" {
							dropSnapshot(b, path)
						}
						if err := syncFile(path); err != nil {
							b.Fatal(err)
						}
						if cache == "cold" {
							if err := dropFileCache(path); err != nil {
								b.Skipf("cannot drop the page cache: %v", err)
							}
						}
						b.StartTimer()
						s, err := Open(path, nil)
						if err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						if s.filtersFrom != from {
							b.Fatalf("filters from %s, want %s", s.filtersFrom, from)
						}
						if st := mustStats(b, s); st.Keys != uint64(keys) {
							b.Fatalf("keys %d", st.Keys)
						}
						if err := s.Close(); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/open")
				})
			}
		}
	}
}

func dropSnapshot(tb testing.TB, path string) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketFilters) == nil {
			return nil
		}
		return tx.DeleteBucket(bucketFilters)
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// BenchmarkBloomMemory reports the filter's size for n keys at the default
// false-positive rate (sized for n, ExpectedKeys = n), the memory of all
// filters after Open with n keys stored (front sized 2n + run filters), and
// the measured false-positive rate of the filter sized for n.
func BenchmarkBloomMemory(b *testing.B) {
	for _, keys := range []int{1_000_000, 10_000_000} {
		b.Run("keys="+human(keys), func(b *testing.B) {
			var f *bloom.BloomFilter
			for range b.N {
				f = bloom.NewWithEstimates(uint(keys), DefaultFalsePositiveRate)
			}
			b.StopTimer()
			key := make([]byte, 0, 32)
			for i := range uint64(keys) {
				key = appendSeenKey(key[:0], "t", fmt.Sprint(i))
				f.Add(key)
			}
			fp := 0
			const probes = 200_000
			for i := range uint64(probes) {
				key = appendSeenKey(key[:0], "u", fmt.Sprint(i))
				if f.Test(key) {
					fp++
				}
			}
			// At Open with n keys stored: the front filter for 2n keys plus
			// the run filters, n keys together.
			f2 := bloom.NewWithEstimates(uint(2*keys), DefaultFalsePositiveRate)
			mib := func(f *bloom.BloomFilter) float64 { return float64(len(f.BitSet().Words())*8) / (1 << 20) }
			b.ReportMetric(mib(f), "MiB")
			b.ReportMetric(mib(f2)+mib(f), "MiB@open")
			b.ReportMetric(float64(f.Cap())/float64(keys), "bits/key")
			b.ReportMetric(float64(fp)/probes, "fp-rate")
		})
	}
}

// BenchmarkList measures a 100-event page at the start and deep inside a
// 1M-event store: the cost must not depend on the position.
func BenchmarkList(b *testing.B) {
	keys := benchSizes()[1]
	path := copyFixture(b, keys)
	s, err := Open(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	deep := ""
	for range 2000 { // 200k events in
		p, err := s.List(event.ListQuery{Limit: 100, Cursor: deep})
		if err != nil {
			b.Fatal(err)
		}
		deep = p.NextCursor
	}
	topicDeep := encodeCursor(cursor{kind: kindTopic, topic: "topic-07", key: appendIdxKey(nil, baseTime.Add(900*time.Second), 0)})
	for _, c := range []struct{ name, topic, cursor string }{
		{"all/first", "", ""}, {"all/deep", "", deep},
		{"topic/first", "topic-07", ""}, {"topic/deep", "topic-07", topicDeep},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				p, err := s.List(event.ListQuery{Topic: c.topic, Cursor: c.cursor, Limit: 100})
				if err != nil || len(p.Events) != 100 {
					b.Fatalf("%d events, %v", len(p.Events), err)
				}
			}
		})
	}
}

func human(n int) string {
	switch {
	case n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// cpuTime is the CPU time (user + system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
