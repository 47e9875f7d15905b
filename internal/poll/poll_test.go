package poll

import (
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	n := 0
	if !Within(time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("a condition that holds at the third check: n = %d", n)
	}
	start := time.Now()
	if Within(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("a condition that never holds reported as held")
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatal("gave up before the timeout")
	}
}
