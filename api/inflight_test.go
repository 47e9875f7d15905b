package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aggregator-dev/aggregator/event"
)

// gatedBackend holds every Publish until the gate is closed, counting the
// calls inside it.
type gatedBackend struct {
	*fakeBackend
	gate   chan struct{}
	mu     sync.Mutex
	inside int
}

func (g *gatedBackend) Publish(ctx context.Context, evs []event.Event) (uint64, uint64, error) {
	g.mu.Lock()
	g.inside++
	g.mu.Unlock()
	<-g.gate
	return g.fakeBackend.Publish(ctx, evs)
}

func (g *gatedBackend) insideNow() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inside
}

// publishAsync posts one event in a goroutine of the bubble; the reply
// arrives on the channel.
func publishAsync(tb testing.TB, h http.Handler, id, body string) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	if body == "" {
		body = mustJSON(tb, ev("t", id))
	}
	go func() {
		req := httptest.NewRequest(http.MethodPost, "/publish", strings.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		out <- rec
	}()
	return out
}

// TestInflightBound fills the write path's slots with requests held inside
// the backend: the next request waits up to InflightWait, then gets 429 with
// Retry-After and writes nothing; a request waiting when a slot frees takes
// it; invalid requests are answered without a slot.
func TestInflightBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &gatedBackend{fakeBackend: newFake(), gate: make(chan struct{})}
		h := New(g, &Options{MaxInflightPublish: 2, InflightWait: 5 * time.Second})
		held := []<-chan *httptest.ResponseRecorder{publishAsync(t, h, "a", ""), publishAsync(t, h, "b", "")}
		synctest.Wait()
		if n := g.insideNow(); n != 2 {
			t.Fatalf("%d requests inside the backend, want 2", n)
		}

		// A bad request is refused at once: it never needs a slot.
		bad := publishAsync(t, h, "", `{"topic":1}`)
		synctest.Wait()
		select {
		case rec := <-bad:
			if rec.Code != http.StatusUnprocessableEntity {
				t.Fatalf("bad request while full: %d", rec.Code)
			}
		default:
			t.Fatal("an invalid request waited for a slot")
		}

		// Over the bound: waits the whole InflightWait, then 429.
		start := time.Now()
		over := <-publishAsync(t, h, "c", "")
		if over.Code != http.StatusTooManyRequests || over.Header().Get("Retry-After") == "" {
			t.Fatalf("over the bound: %d (Retry-After %q), want 429 with Retry-After", over.Code, over.Header().Get("Retry-After"))
		}
		if waited := time.Since(start); waited != 5*time.Second {
			t.Fatalf("refused after %v, want the 5s InflightWait", waited)
		}

		// A request that is waiting when a slot frees gets it.
		waiting := publishAsync(t, h, "d", "")
		synctest.Wait()
		select {
		case rec := <-waiting:
			t.Fatalf("request did not wait for a slot: %d", rec.Code)
		default:
		}
		if n := g.insideNow(); n != 2 {
			t.Fatalf("%d requests inside the backend while full, want 2", n)
		}
		if m := doAuth(t, h, "GET", "/metrics", "", ""); !strings.Contains(m.Body.String(), "aggregator_publish_inflight 2\n") {
			t.Fatalf("metrics lack aggregator_publish_inflight 2")
		}
		close(g.gate)
		for _, c := range append(held, waiting) {
			if rec := <-c; rec.Code != http.StatusOK {
				t.Fatalf("held request: %d %s", rec.Code, rec.Body)
			}
		}
		ids := map[string]bool{}
		for _, e := range g.log {
			ids[e.EventID] = true
		}
		if len(g.log) != 3 || ids["c"] {
			t.Fatalf("written %v, want a, b and d (not the refused c)", ids)
		}
		if len(h.inflight) != 0 {
			t.Fatalf("%d slots still taken", len(h.inflight))
		}
	})
}

func TestInflightNoWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &gatedBackend{fakeBackend: newFake(), gate: make(chan struct{})}
		h := New(g, &Options{MaxInflightPublish: 1, InflightWait: -1})
		held := publishAsync(t, h, "a", "")
		synctest.Wait()
		start := time.Now()
		if rec := <-publishAsync(t, h, "b", ""); rec.Code != http.StatusTooManyRequests || time.Since(start) != 0 {
			t.Fatalf("over the bound without a wait: %d after %v, want 429 at once", rec.Code, time.Since(start))
		}
		close(g.gate)
		if rec := <-held; rec.Code != http.StatusOK {
			t.Fatalf("held: %d", rec.Code)
		}
	})
}
