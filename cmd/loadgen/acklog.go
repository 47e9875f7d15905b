package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// ackLog records every acknowledged (topic, event_id), one per line as
// "topic<TAB>event_id". It is safe for concurrent use.
type ackLog struct {
	mu  sync.Mutex
	w   *bufio.Writer
	err error
}

func newAckLog(w io.Writer) *ackLog {
	return &ackLog{w: bufio.NewWriterSize(w, 256<<10)}
}

// appendAcks appends the lines of the events of r to dst.
func appendAcks(dst []byte, p *plan, r *request) []byte {
	for _, id := range r.ids {
		k := p.key(id)
		dst = append(dst, k.Topic...)
		dst = append(dst, '\t')
		dst = append(dst, k.EventID...)
		dst = append(dst, '\n')
	}
	return dst
}

// write appends pre-formatted lines; the first error sticks.
func (a *ackLog) write(lines []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		_, a.err = a.w.Write(lines)
	}
}

// Flush writes buffered lines and returns the first error seen.
func (a *ackLog) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		a.err = a.w.Flush()
	}
	if a.err != nil {
		return fmt.Errorf("write acklog: %w", a.err)
	}
	return nil
}

// readAckLog reads an acklog. It returns the set of acknowledged keys and
// how many lines were read (a key acknowledged twice is one key).
func readAckLog(r io.Reader) (map[key]struct{}, int, error) {
	acked := make(map[key]struct{})
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines := 0
	for sc.Scan() {
		line := sc.Bytes()
		lines++
		if len(line) == 0 {
			continue
		}
		topic, id, ok := bytes.Cut(line, []byte{'\t'})
		if !ok || len(topic) == 0 || len(id) == 0 || bytes.IndexByte(id, '\t') >= 0 {
			return nil, lines, fmt.Errorf("acklog line %d: want topic<TAB>event_id, got %q", lines, truncate(string(line), 80))
		}
		acked[key{Topic: string(topic), EventID: string(id)}] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return nil, lines, fmt.Errorf("read acklog: %w", err)
	}
	return acked, lines, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sampleKeys formats up to n keys for a report.
func sampleKeys(keys []key, n int) string {
	var b strings.Builder
	for i, k := range keys {
		if i == n {
			fmt.Fprintf(&b, " ... (%d more)", len(keys)-n)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k.Topic + "/" + k.EventID)
	}
	return b.String()
}
