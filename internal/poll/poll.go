// Package poll is the one polling helper of the project's tests: it waits
// for a condition with a deadline instead of sleeping for a guessed time.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = time.Millisecond

// Until checks cond until it holds and fails the test (tb.Fatalf, naming
// what was awaited) if it still does not after timeout.
func Until(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Within(timeout, cond) {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Within checks cond until it holds or timeout passes, and reports whether
// it held. It is for callers that report the failure themselves.
func Within(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return true
}
