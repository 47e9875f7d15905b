package wal

import (
	"log/slog"
	"time"
)

// logEvery is the least time between two log lines of one kind about
// failed commits and recoveries. A full disk fails every commit and every
// recovery attempt, and publishers retry at once: without a bound that is
// one line per refused request.
const logEvery = time.Second

// logKeyNotLogged counts the lines of the same kind held back since the
// last one that was logged.
const logKeyNotLogged = "not_logged"

// throttle lets one event per logEvery through and counts the others.
type throttle struct {
	next    time.Time
	skipped int
}

// allow reports whether the event at now may be logged and, if so, how many
// were held back since the last one that was.
func (t *throttle) allow(now time.Time) (ok bool, skipped int) {
	if now.Before(t.next) {
		t.skipped++
		return false, 0
	}
	t.next = now.Add(logEvery)
	skipped, t.skipped = t.skipped, 0
	return true, skipped
}

// failureLog writes the writer's lines about failed commits, failed
// recoveries and recoveries, at most one per logEvery and kind, each with
// the count of the lines of its kind not logged. It is owned by the writer
// goroutine.
//
// A recovery is logged whenever a failure was logged after the last logged
// recovery, so the last line logged always tells the state the log is in:
// after a recovery nothing else is logged, and while the log stays
// unavailable the writer retries every Options.RetryInterval and logs the
// failure again once logEvery has passed.
type failureLog struct {
	logger *slog.Logger
	now    func() time.Time

	commit, recovery, reopen throttle

	failureShown bool // a failure was logged since the last logged recovery
	recoveries   int  // recoveries not logged since the last one that was
}

func (f *failureLog) commitFailed(cause error) {
	if ok, skipped := f.commit.allow(f.now()); ok {
		f.failureShown = true
		f.logger.Error("wal: group commit failed, nothing of it acknowledged", logKeyErr, cause, logKeyNotLogged, skipped)
	}
}

func (f *failureLog) recoveryFailed(err error) {
	if ok, skipped := f.recovery.allow(f.now()); ok {
		f.failureShown = true
		f.logger.Warn("wal: log unavailable, recovery failed", logKeyErr, err, logKeyNotLogged, skipped)
	}
}

func (f *failureLog) reopenFailed(err error) {
	if ok, skipped := f.reopen.allow(f.now()); ok {
		f.failureShown = true
		f.logger.Error("wal: reopening tidwall/wal failed", logKeyErr, err, logKeyNotLogged, skipped)
	}
}

func (f *failureLog) recovered() {
	if !f.failureShown {
		f.recoveries++
		return
	}
	f.failureShown = false
	f.logger.Info("wal: log recovered, accepting appends", logKeyNotLogged, f.recoveries)
	f.recoveries = 0
}
