package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/aggregator-dev/aggregator/api"
)

// errNotLocal is returned by checkTarget for any target that is not
// http://127.0.0.1:<port>.
var errNotLocal = errors.New("target must be http://127.0.0.1:<port>")

// checkTarget validates a base URL and returns it without a trailing slash.
// Only 127.0.0.1 is accepted: the loadgen is a local tool.
func checkTarget(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("parse target: %w", err)
	}
	if u.Scheme != "http" || u.Hostname() != "127.0.0.1" || u.Port() == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("%w: got %q", errNotLocal, raw)
	}
	return "http://" + u.Host, nil
}

// newClient returns an HTTP client that keeps up to conns idle keep-alive
// connections to the target, so every publisher reuses its connection.
func newClient(conns int) *http.Client {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          conns + 4,
		MaxIdleConnsPerHost:   conns + 4,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ResponseHeaderTimeout: 60 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// listedEvent is the part of an event of GET /events the verifier needs.
type listedEvent struct {
	Topic   string `json:"topic"`
	EventID string `json:"event_id"`
	Offset  uint64 `json:"offset"`
}

// eventsPage is the body of GET /events.
type eventsPage struct {
	Events     []listedEvent `json:"events"`
	NextCursor *string       `json:"next_cursor"`
}

// getJSON GETs base+path and decodes a 200 response into v.
func getJSON(ctx context.Context, c *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %d: %s", u, resp.StatusCode, truncate(string(body), 200))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", u, err)
	}
	return nil
}

// getStats fetches GET /stats.
func getStats(ctx context.Context, c *http.Client, base string) (api.StatsReply, error) {
	var s api.StatsReply
	err := getJSON(ctx, c, base+"/stats", &s)
	return s, err
}

// waitLagZero polls GET /stats until the consumer has caught up (wal.lag 0)
// or timeout passes, and returns the last stats seen.
func waitLagZero(ctx context.Context, c *http.Client, base string, timeout time.Duration) (api.StatsReply, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var last api.StatsReply
	var lastErr error
	for {
		s, err := getStats(ctx, c, base)
		if err == nil && s.WAL.Lag == 0 {
			return s, nil
		}
		if err == nil {
			last = s
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return last, fmt.Errorf("wait for lag 0: %w (last error: %v)", ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("wait for lag 0: %w (lag %d)", ctx.Err(), last.WAL.Lag)
		case <-tick.C:
		}
	}
}
