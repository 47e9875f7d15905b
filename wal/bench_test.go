package wal

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkAppend is the group-commit grid: concurrent appenders x events
// per Append x payload bytes. One op is one Append call; b.SetBytes counts
// its payload. events/s and fsyncs/s are measured over the whole run.
func BenchmarkAppend(b *testing.B) {
	for _, appenders := range []int{1, 16, 64} {
		for _, events := range []int{1, 100} {
			for _, size := range []int{256, 4096} {
				name := fmt.Sprintf("appenders=%d/events=%d/payload=%d", appenders, events, size)
				b.Run(name, func(b *testing.B) { benchAppend(b, appenders, events, size, 0) })
			}
		}
	}
}

// BenchmarkAppendPipelined repeats the cells with many records per commit
// with Options.PipelineBytes set, to compare with BenchmarkAppend.
func BenchmarkAppendPipelined(b *testing.B) {
	for _, appenders := range []int{16, 64} {
		for _, size := range []int{256, 4096} {
			name := fmt.Sprintf("appenders=%d/events=100/payload=%d", appenders, size)
			b.Run(name, func(b *testing.B) { benchAppend(b, appenders, 100, size, 64<<10) })
		}
	}
}

func benchAppend(b *testing.B, appenders, events, size, pipeline int) {
	var commits atomic.Int64
	l, err := Open(b.TempDir(), &Options{PipelineBytes: pipeline, onCommit: func(int, int, time.Duration) { commits.Add(1) }})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	payload := make([]byte, size)
	rand.Read(payload)
	recs := make([][]byte, events)
	for i := range recs {
		recs[i] = payload // never modified, so sharing it is within Append's contract
	}
	b.SetBytes(int64(events * size))
	var calls atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for calls.Add(1) <= int64(b.N) {
				if _, _, err := l.Append(context.Background(), recs); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N*events)/elapsed, "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*events), "cpu-ns/event")
	b.ReportMetric(float64(commits.Load())/elapsed, "fsyncs/s")
}

// cpuTime is the user+system CPU time of the process so far: CPU per event
// stays meaningful when other processes share the cores.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDiskFloor is the raw floor of the same disk: one goroutine
// appending the bytes of one Append call (records framed as the log frames
// them) to a file and fsyncing it, in a loop, without any log.
func BenchmarkDiskFloor(b *testing.B) {
	for _, events := range []int{1, 100} {
		for _, size := range []int{256, 4096} {
			b.Run(fmt.Sprintf("events=%d/payload=%d", events, size), func(b *testing.B) {
				entry := len(encodeEntry(1, 0, make([]byte, size)))
				buf := make([]byte, events*entry)
				rand.Read(buf)
				f, err := os.OpenFile(filepath.Join(b.TempDir(), "floor"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				b.SetBytes(int64(events * size))
				b.ResetTimer()
				start := time.Now()
				for range b.N {
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				elapsed := time.Since(start).Seconds()
				b.StopTimer()
				b.ReportMetric(float64(b.N*events)/elapsed, "events/s")
				b.ReportMetric(float64(b.N)/elapsed, "fsyncs/s")
			})
		}
	}
}
