package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlowBodiesGetTheirReply: publishers that trickle their bodies get a
// reply: a 408 when the read timeout cuts them, a 200 when the body arrives
// after the write timeout has passed (counted from the headers) but within
// the read timeout. The write timeout counts from the end of the body.
func TestSlowBodiesGetTheirReply(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		name        string
		read, write time.Duration
		rest        time.Duration // when the complete one sends its second half
	}{
		{"equal timeouts", 600 * ms, 600 * ms, 300 * ms},
		{"write timeout shorter", 600 * ms, 300 * ms, 450 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, t.TempDir(), func(c *Config) {
				c.ReadTimeout, c.WriteTimeout = tc.read, tc.write
			})
			addr := strings.TrimPrefix(ts.base, "http://")
			const stalled = 20
			var wg sync.WaitGroup
			errs := make(chan error, stalled+1)
			for i := range stalled {
				wg.Go(func() {
					// Never sends the rest of its body: cut by the read timeout.
					errs <- slowPublish(addr, makeEvent(i, "slow"), -1, http.StatusRequestTimeout)
				})
			}
			wg.Go(func() {
				// Sends the rest within the read timeout (after the write
				// timeout when that is shorter).
				errs <- slowPublish(addr, makeEvent(100, "slow"), tc.rest, http.StatusOK)
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// slowPublish sends a publish of ev whose body stops half way, sends the
// rest after rest (never when rest < 0), and checks the reply's status.
func slowPublish(addr string, ev map[string]any, rest time.Duration, want int) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	body := fmt.Sprintf(`{"topic":%q,"event_id":%q,"timestamp":%q,"source":%q}`, ev["topic"], ev["event_id"], ev["timestamp"], ev["source"])
	half := len(body) / 2
	head := "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	if _, err := io.WriteString(conn, head+body[:half]); err != nil {
		return err
	}
	if rest >= 0 {
		time.Sleep(rest) // the slow sender under test
		if _, err := io.WriteString(conn, body[half:]); err != nil {
			return err
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("%s (rest after %v): no reply: %w", ev["event_id"], rest, err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%s (rest after %v): status %d, want %d", ev["event_id"], rest, resp.StatusCode, want)
	}
	return nil
}
