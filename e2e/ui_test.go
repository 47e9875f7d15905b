package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium returns the path of an installed Chromium or Chrome, "" when
// there is none.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser starts a headless Chromium for the test, with the flags this
// machine's closed network needs (no background connections, no component
// updates, no QUIC) and a fresh profile, and collects what the page logs as
// an error: console.error, uncaught exceptions, and the browser's own error
// entries (a failed load, a refused request, a Content-Security-Policy
// violation).
func browser(tb testing.TB) (context.Context, func() []string) {
	tb.Helper()
	bin := chromium()
	if bin == "" {
		if os.Getenv("CI") != "" {
			tb.Fatal("no chromium on a CI machine: .ci/run installs it with apt-get (package chromium)")
		}
		tb.Skip("the dashboard test needs Chromium, which is not installed: apt-get install chromium (CI installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(tb.TempDir()),
		chromedp.WindowSize(1280, 1000),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	// The first run starts the browser, which lives as long as ctx (so no
	// timeout on it: the actions get theirs).
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		tb.Fatalf("start chromium %s: %v", bin, err)
	}
	var (
		mu       sync.Mutex
		problems []string
		done     = make(chan struct{})
	)
	messages := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				mu.Lock()
				problems = append(problems, m.String())
				mu.Unlock()
			}
		}
	}()
	tb.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
		<-done
	})
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), problems...)
	}
}

// do runs steps in the page within a minute.
func do(ctx context.Context, steps ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return chromedp.Do(ctx, steps...)
}

// waitJS polls a JavaScript expression in the page until it is true.
func waitJS(ctx context.Context, tb testing.TB, what, expr string) {
	tb.Helper()
	start := time.Now()
	if err := do(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		snapshot, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		tb.Fatalf("the page did not show %s within 30s (%v): %s\npage text:\n%s", what, err, expr, snapshot)
	}
	tb.Logf("the page shows %s after %v", what, time.Since(start).Round(time.Millisecond))
}

// TestDashboard loads GET /ui in headless Chromium from a server whose
// reading needs a token: the page asks for the token, then shows the rates
// moving while events are published, lists the topic and a published
// event, keeps the token across a reload, and logs no error.
func TestDashboard(t *testing.T) {
	began := time.Now()
	ctx, problems := browser(t)
	t.Logf("chromium started in %v", time.Since(began).Round(time.Millisecond))
	srv := start(t, "--publish-token", publishToken, "--read-token", readToken)

	err := do(ctx,
		chromedp.Navigate(srv.base+"/ui"),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("token"), readToken),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("dash")),
	)
	if err != nil {
		t.Fatalf("log in with the read token: %v", err)
	}

	srv.publish(t, publishToken, event("dashboard", "ui-e2e-first"))
	waitJS(ctx, t, "the published event", `document.getElementById('event-rows').textContent.includes('ui-e2e-first')`)

	// Publish a trickle while the rates are read: each interval sees events.
	stop := make(chan struct{})
	published := make(chan error, 1)
	var sent atomic.Int64
	go func() { published <- trickle(srv.base, stop, &sent) }()
	defer func() {
		close(stop)
		if err := <-published; err != nil {
			t.Errorf("publishing: %v", err)
		}
	}()
	number := func(id string) string {
		return `parseFloat(document.getElementById('` + id + `').textContent.replace(/,/g, ''))`
	}
	waitJS(ctx, t, "received /s above 0", number("rate-received")+` > 0`)
	waitJS(ctx, t, "applied /s above 0", number("rate-applied")+` > 0`)
	waitJS(ctx, t, "an fsync average", `/[0-9.]+ (ms|µs)/.test(document.getElementById('fsync-avg').textContent)`)
	waitJS(ctx, t, "an fsync p99", `/[0-9.]+ (ms|µs)/.test(document.getElementById('fsync-p99').textContent)`)
	waitJS(ctx, t, "a sparkline", `document.querySelector('#spark-received polyline').getAttribute('points').split(' ').length >= 2`)
	waitJS(ctx, t, "the topic", `[...document.querySelectorAll('#topic-rows td')].some(td => td.textContent === 'dashboard')`)
	waitJS(ctx, t, "live events", `document.getElementById('event-rows').textContent.includes('ui-e2e-trickle-')`)

	// The topic filter: only that topic's events, the one published there.
	srv.publish(t, publishToken, event("other", "ui-e2e-other"))
	if err := do(ctx,
		chromedp.SendKeys(chromedp.ID("feed-topic"), "other"),
		chromedp.Click(chromedp.CSS(`#feed-form button[type="submit"]`)),
	); err != nil {
		t.Fatalf("filter by topic: %v", err)
	}
	waitJS(ctx, t, "the event of the filtered topic", `document.getElementById('event-rows').textContent.includes('ui-e2e-other')`)
	waitJS(ctx, t, "only the filtered topic", `[...document.querySelectorAll('#event-rows tr')].every(tr => tr.children[1].textContent === 'other')`)
	if path := os.Getenv("E2E_SCREENSHOT"); path != "" {
		if png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err != nil {
			t.Errorf("screenshot: %v", err)
		} else if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Errorf("screenshot: %v", err)
		}
	}

	// The token stays in the tab: a reload goes straight to the dashboard.
	if err := do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("dash"))); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// And it follows the feed again: an event published after the reload
	// shows up.
	later := fmt.Sprintf("ui-e2e-trickle-%d", sent.Load()+4)
	waitJS(ctx, t, "a live event after a reload", `document.getElementById('event-rows').textContent.includes('`+later+`')`)

	for _, p := range problems() {
		t.Errorf("the page logged an error: %s", p)
	}
	t.Logf("dashboard test took %v (browser start included)", time.Since(began).Round(time.Millisecond))
}

// trickle publishes two events every 100 ms until stop is closed, and
// counts them in sent.
func trickle(base string, stop <-chan struct{}, sent *atomic.Int64) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i += 2 {
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
		body := "[" + event("dashboard", fmt.Sprintf("ui-e2e-trickle-%d", i)) + "," +
			event("dashboard", fmt.Sprintf("ui-e2e-trickle-%d", i+1)) + "]"
		req, err := http.NewRequest(http.MethodPost, base+"/publish", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+publishToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("publish: status %d", resp.StatusCode)
		}
		sent.Store(int64(i + 2))
	}
}
