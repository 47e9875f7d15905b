package wal

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
)

// job is one group commit on its way through the writer and the syncer.
type job struct {
	batch          []*request
	first, last    uint64
	records, bytes int
	cuts           []cut    // segments started while writing it
	tail           int64    // size of the tail segment after it
	file           *os.File // tail segment handle to fsync
	alsoWrote      []string // with cuts: the other segments it wrote into
	err            error    // write error (writer) or fsync error (syncer)
	took           time.Duration
}

// run is the writer goroutine. It gathers pending appends into group
// commits, writes and fsyncs each. With Options.PipelineBytes, when enough
// is queued, it hands the fsync of commit k to the syncer and writes commit
// k+1 (to the page cache) meanwhile, so the CPU work of one commit overlaps
// the disk wait of the previous one. Commit k+1 is fsynced, and k+2
// written, only after k's fsync returned; a failed fsync fails both k and
// k+1, and the files are cut back to the end of k-1.
func (l *Log) run() {
	defer close(l.done)
	defer func() {
		close(l.syncReq)
		<-l.syncerDone
	}()
	w := newWriterTimers(l.opts.RetryInterval, l.opts.checkEvery)
	defer w.stop()
	quitting := false
	for {
		select {
		case <-w.check.C: // also while busy
			l.checkFiles()
		default:
		}
		switch {
		case l.inflight == nil && l.ready == nil:
			batch := l.take(0)
			if len(batch) == 0 {
				if quitting {
					return
				}
				quitting = l.idle(w)
				continue
			}
			l.ready = l.writeJob(batch)
		case l.ready == nil:
			batch := l.take(l.pipelineBytes())
			if len(batch) == 0 {
				select {
				case j := <-l.syncRes:
					l.resolve(j)
				case <-l.kick:
				}
				continue
			}
			l.ready = l.writeJob(batch)
		}
		if l.inflight != nil {
			l.resolve(<-l.syncRes)
		}
		if l.ready != nil {
			l.start()
		}
	}
}

// writerTimers are the writer's clocks: the retry of a recovery while the
// log is unavailable, and the periodic check of its files.
type writerTimers struct {
	every time.Duration
	retry *time.Timer
	armed bool // retry is running
	check *time.Ticker
}

func newWriterTimers(retryEvery, checkEvery time.Duration) *writerTimers {
	w := &writerTimers{every: retryEvery, retry: time.NewTimer(time.Hour), check: time.NewTicker(checkEvery)}
	w.retry.Stop()
	return w
}

func (w *writerTimers) stop() {
	w.retry.Stop()
	w.check.Stop()
}

// idle waits, with nothing queued, for an append, the file check, the
// retry of a recovery, or Close. It reports whether Close was called.
func (l *Log) idle(w *writerTimers) (quit bool) {
	if l.state.Load() != nil && !w.armed {
		w.retry.Reset(w.every)
		w.armed = true
	}
	select {
	case <-l.kick:
	case <-w.check.C:
		l.checkFiles()
	case <-w.retry.C:
		w.armed = false
		if l.state.Load() != nil {
			l.tryRecover()
		}
	case <-l.quit:
		return true
	}
	return false
}

// pipelineBytes is how much must be queued for the writer to write the
// next commit while the previous one is being fsynced; pipelining is off
// when Options.PipelineBytes is not positive.
func (l *Log) pipelineBytes() int {
	if l.opts.PipelineBytes <= 0 {
		return math.MaxInt
	}
	return l.opts.PipelineBytes
}

// take removes the next group commit's requests from the queue, if at least
// minBytes of records are queued.
func (l *Log) take(minBytes int) []*request {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if len(l.pending) == 0 || l.queued < minBytes {
		return nil
	}
	var (
		batch      []*request
		recs, size int
		i          int
	)
	for ; i < len(l.pending); i++ {
		r := l.pending[i]
		if r.cancelled {
			continue
		}
		if len(batch) > 0 && (recs+len(r.recs) > l.opts.MaxBatchRecords || size+r.bytes > l.opts.MaxBatchBytes) {
			break
		}
		r.taken = true
		l.queued -= r.bytes
		batch = append(batch, r)
		recs += len(r.recs)
		size += r.bytes
	}
	rest := append(l.spare[:0], l.pending[i:]...)
	clear(l.pending)
	l.spare = l.pending[:0]
	l.pending = rest
	return batch
}

// answer completes the requests of a batch with err (nil: their offsets).
func (l *Log) answer(batch []*request, err error) {
	l.outstanding.Add(-int64(len(batch)))
	for _, r := range batch {
		if err != nil {
			r.first, r.last, r.err = 0, 0, err
		}
		close(r.done)
	}
}

// writeJob frames a batch and hands it to tidwall/wal. It returns nil when
// nothing is left to sync (every caller already answered).
func (l *Log) writeJob(batch []*request) *job {
	batch = l.dropCancelled(batch)
	if len(batch) == 0 {
		return nil
	}
	if err := l.lostErr(); err != nil {
		l.answer(batch, err)
		return nil
	}
	if l.state.Load() != nil && !l.tryRecover() {
		l.answer(batch, *l.state.Load())
		return nil
	}
	if l.inflight == nil && l.app.needsRefresh(l.removed.Load()) {
		if err := l.reopenTidwall(); err != nil {
			err = unavailable(fmt.Errorf("reopen: %w", err))
			l.flog.reopenFailed(err)
			l.state.Store(&err)
			l.answer(batch, err)
			return nil
		}
	}
	j := &job{batch: batch, first: l.written + 1}
	l.frameBatch(j)
	l.written = j.last
	var prevTail string
	if l.app.tail != nil {
		prevTail = l.app.tail.Name()
	}
	var err error
	if j.cuts, j.tail, j.file, err = l.app.write(); err != nil {
		j.err = fmt.Errorf("write: %w", err)
		return j
	}
	if len(j.cuts) > 0 && prevTail != "" {
		j.alsoWrote = append(j.alsoWrote, prevTail)
		for _, c := range j.cuts[:len(j.cuts)-1] {
			j.alsoWrote = append(j.alsoWrote, filepath.Join(l.dir, segmentName(c.next)))
		}
	}
	if err := l.fault(faultWrite); err != nil {
		j.err = fmt.Errorf("write: %w", err)
	}
	return j
}

// dropCancelled answers the requests whose caller gave up and returns the
// others.
func (l *Log) dropCancelled(batch []*request) []*request {
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			l.answer([]*request{r}, err)
			continue
		}
		live = append(live, r)
	}
	return live
}

// frameBatch frames the records of j's requests, gives them their offsets
// and stages them in the appender.
func (l *Log) frameBatch(j *job) {
	l.app.begin(j.first)
	next := j.first
	for _, r := range j.batch {
		r.first = next
		for _, rec := range r.recs {
			var flags byte
			if next == j.first {
				flags = flagBatchStart
			}
			l.frame = appendFrame(l.frame[:0], next, flags, rec)
			l.app.add(l.frame)
			next++
			j.bytes += len(rec)
		}
		j.records += len(r.recs)
		r.last = next - 1
	}
	j.last = next - 1
}

// reopenTidwall closes and reopens tidwall/wal on the durable log, to drop
// its record of the segments TruncateFront removed. Nothing may be in flight.
func (l *Log) reopenTidwall() error {
	l.removed.Store(0)
	l.mu.RLock()
	tail := l.segs[len(l.segs)-1]
	l.mu.RUnlock()
	if err := l.app.close(); err != nil {
		return err
	}
	return l.app.open(tail, l.written)
}

// start fsyncs the ready job, or fails it if its write failed. The writer
// fsyncs itself unless pipelining is on and enough is queued to be written
// during the fsync: that saves two goroutine hand-offs per commit.
func (l *Log) start() {
	j := l.ready
	l.ready = nil
	if j.err != nil {
		l.fail(j.err, j)
		return
	}
	l.inflight = j
	if !l.opts.noInlineSync && !l.queuedAtLeast(l.pipelineBytes()) {
		l.sync(j)
		l.resolve(j)
		return
	}
	l.syncReq <- j
}

// queuedAtLeast reports whether at least n bytes of records are queued.
func (l *Log) queuedAtLeast(n int) bool {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return len(l.pending) > 0 && l.queued >= n
}

// resolve takes the syncer's result for the inflight job.
func (l *Log) resolve(j *job) {
	l.inflight = nil
	if err := l.app.closeRetired(); err != nil {
		l.logger.Warn("wal: closing old segment handle", logKeyErr, err)
	}
	if j.err != nil {
		jobs := []*job{j}
		if l.ready != nil {
			jobs = append(jobs, l.ready) // written after j: cut with it
			l.ready = nil
		}
		l.fail(j.err, jobs...)
		return
	}
	l.publish(j)
	// Before the answer, so that a caller that got its offsets also sees
	// the commit counted.
	l.metrics.commit(j.records, j.bytes, j.took)
	if l.opts.onCommit != nil {
		l.opts.onCommit(j.records, j.bytes, j.took)
	}
	l.answer(j.batch, nil)
}

// syncer is the goroutine that fsyncs each written group commit: its tail
// segment and, when segments were created, the directory.
func (l *Log) syncer() {
	defer close(l.syncerDone)
	for j := range l.syncReq {
		l.sync(j)
		l.syncRes <- j
	}
}

// sync fsyncs a written job's tail segment and, when segments were
// created, the directory, checks that the segments are still linked, and
// records the outcome in the job.
func (l *Log) sync(j *job) {
	start := time.Now()
	err := l.fault(faultSync)
	if err == nil {
		err = syncTail(j.file)
	}
	if err != nil {
		err = fmt.Errorf("sync: %w", err)
	} else if err = checkCommitFiles(j); err != nil {
		err = fmt.Errorf("sync: %w", err)
	} else if len(j.cuts) > 0 {
		if err = l.fault(faultSyncDir); err == nil {
			err = SyncDir(l.dir)
		}
		if err != nil {
			err = fmt.Errorf("new segment: %w", err)
		}
	}
	j.err, j.took = err, time.Since(start)
}

func (l *Log) fault(f fault) error {
	if l.opts.injectFault == nil {
		return nil
	}
	return l.opts.injectFault(f)
}

// publish makes a durable group commit visible to readers.
func (l *Log) publish(j *job) {
	l.cache.push(j.first, j.batch)
	l.mu.Lock()
	for _, c := range j.cuts {
		l.segs[len(l.segs)-1].size = c.prevSize
		l.segs = append(l.segs, segment{index: c.next, path: filepath.Join(l.dir, segmentName(c.next))})
	}
	l.segs[len(l.segs)-1].size = j.tail
	l.last.Store(j.last)
	close(l.notify)
	l.notify = make(chan struct{})
	l.mu.Unlock()
}

// fail brings the log back to its last durable state after a failed group
// commit, then answers the callers of the failed jobs, so that Writable
// already tells whether that worked when they hear of the failure.
func (l *Log) fail(cause error, jobs ...*job) {
	var err error
	if errors.Is(cause, ErrRemoved) {
		// Nothing to cut back or recover: the files are gone.
		err = l.markLost(cause)
	} else {
		err = unavailable(cause)
		l.flog.commitFailed(cause)
		l.state.Store(&err)
		l.tryRecover()
	}
	for _, j := range jobs {
		l.answer(j.batch, err)
	}
}

// tryRecover tries to bring the log back to its last durable state: close
// tidwall/wal, drop what failed commits left in the files, reopen, and
// check with a test write that the disk takes data again. It reports
// whether the log accepts appends again. Nothing may be in flight. Once
// the log's files were removed it does nothing: recreating them would
// restart the offsets.
func (l *Log) tryRecover() bool {
	if l.lostErr() != nil {
		return false
	}
	err := l.rollBack()
	if err != nil {
		err = unavailable(fmt.Errorf("recover: %w", err))
		l.state.Store(&err)
		l.flog.recoveryFailed(err)
		return false
	}
	if l.state.Swap(nil) != nil {
		l.flog.recovered()
	}
	return true
}

// rollBack brings the files back to the last acknowledged record and
// reopens tidwall/wal on them (see tryRecover).
func (l *Log) rollBack() error {
	if err := l.fault(faultRecover); err != nil {
		return err
	}
	if err := l.app.close(); err != nil {
		l.logger.Warn("wal: closing after failure", logKeyErr, err)
	}
	l.mu.RLock()
	tail := l.segs[len(l.segs)-1]
	l.mu.RUnlock()
	l.written = l.last.Load()
	segs, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	for _, s := range segs {
		if s.index > tail.index {
			if err := os.Remove(s.path); err != nil {
				return fmt.Errorf("remove unacknowledged segment: %w", err)
			}
		}
	}
	if err := cutFile(tail.path, tail.size); err != nil {
		return fmt.Errorf("cut unacknowledged records: %w", err)
	}
	if err := SyncDir(l.dir); err != nil {
		return err
	}
	if err := l.probe(); err != nil {
		return err
	}
	if err := l.app.open(tail, l.written); err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	return nil
}

// probeBytes is the size of the recovery's test write: one page.
//
// The probe tells whether the disk takes data at all again; it does not
// promise that the next commit fits. A commit larger than the space left
// then fails like the one before it and is refused (503) and cut back in
// the same way, so a small probe costs nothing in safety. It spares the
// disk: recovery is retried by every refused append, and a probe as large
// as the failed commit (up to MaxBatchBytes) wrote up to 16 MiB per refused
// request on a nearly full disk. It also lets requests that still fit be
// acknowledged while a larger one is refused.
const probeBytes = 4 << 10

// probe writes, fsyncs and removes a file of probeBytes, to tell whether
// the disk takes data again.
func (l *Log) probe() error {
	path := filepath.Join(l.dir, ".probe")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	_, err = f.Write(make([]byte, probeBytes))
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close(), os.Remove(path))
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	return nil
}
