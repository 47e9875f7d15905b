package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressReporter shows a publisher's counters while it runs: a live bar
// on a terminal, or a plain line every interval otherwise.
type progressReporter struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// startProgress starts reporting pb's progress towards total events on w.
// Stop ends it and waits for its goroutine.
func startProgress(w io.Writer, terminal bool, interval time.Duration, pb *publisher, total int) *progressReporter {
	p := &progressReporter{stop: make(chan struct{})}
	if terminal {
		interval = 150 * time.Millisecond
	}
	p.wg.Go(func() {
		var bar *progressbar.ProgressBar
		if terminal {
			bar = progressbar.NewOptions64(int64(total),
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetDescription("publishing"),
				progressbar.OptionShowCount(),
				progressbar.OptionShowIts(),
				progressbar.OptionSetItsString("ev"),
				progressbar.OptionSetWidth(30),
				progressbar.OptionSetPredictTime(true),
			)
		}
		start := time.Now()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		show := func() {
			acked := pb.ackedEvents.Load()
			failed := pb.failedReqs.Load()
			if bar != nil {
				bar.Describe(fmt.Sprintf("acked (errors %d)", failed))
				_ = bar.Set64(acked)
				return
			}
			el := time.Since(start)
			fmt.Fprintf(w, "progress: %5.1fs acked %d/%d events (%.0f ev/s), requests %d, errors %d\n",
				el.Seconds(), acked, total, float64(acked)/max(el.Seconds(), 1e-9), pb.finishedReqs.Load(), failed)
		}
		for {
			select {
			case <-p.stop:
				if bar != nil {
					show()
					_ = bar.Exit()
					fmt.Fprintln(w)
				}
				return
			case <-tick.C:
				show()
			}
		}
	})
	return p
}

// Stop ends the reporting; calling it twice is harmless.
func (p *progressReporter) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}
