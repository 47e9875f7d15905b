// Command fakeagg is a tiny stand-in for the aggregator binary, used only to
// test the loadgen's drill logic without the real server: it appends each
// publish request's events as JSON lines to <data-dir>/wal/00000000000000000001,
// fsyncs before answering, truncates a torn tail at start, deduplicates in
// memory, and exits 0 on SIGTERM.
//
// FAKEAGG_FAULT=forget-first makes it forget the oldest event at start (an
// acknowledged event lost); FAKEAGG_FAULT=sigterm-exit-1 makes SIGTERM exit 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type ev struct {
	Topic   string          `json:"topic"`
	EventID string          `json:"event_id"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Seq     uint64          `json:"seq"`
	Offset  uint64          `json:"offset"`
}

type state struct {
	mu       sync.Mutex
	f        *os.File
	events   []ev
	seen     map[[2]string]bool
	received uint64
	dups     uint64
}

func (s *state) apply(e ev) {
	s.received++
	k := [2]string{e.Topic, e.EventID}
	if s.seen[k] {
		s.dups++
		return
	}
	s.seen[k] = true
	e.Offset = s.received
	e.Payload = nil
	e.Seq = uint64(len(s.events)) + 1
	s.events = append(s.events, e)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "")
	dir := flag.String("data-dir", "./data", "")
	flag.Parse()
	walDir := filepath.Join(*dir, "wal")
	if err := os.MkdirAll(walDir, 0o755); err != nil {
		log.Fatal(err)
	}
	path := filepath.Join(walDir, "00000000000000000001")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	s := &state{f: f, seen: map[[2]string]bool{}}
	data, err := io.ReadAll(f)
	if err != nil {
		log.Fatal(err)
	}
	good := 0
	for good < len(data) {
		nl := bytes.IndexByte(data[good:], '\n')
		if nl < 0 {
			break
		}
		var e ev
		if json.Unmarshal(data[good:good+nl], &e) != nil || e.Topic == "" {
			break
		}
		s.apply(e)
		good += nl + 1
	}
	fault := os.Getenv("FAKEAGG_FAULT")
	if fault == "forget-first" && len(s.events) > 0 {
		// Rebuild the state without the oldest event, an acknowledged one.
		lost := [2]string{s.events[0].Topic, s.events[0].EventID}
		s = &state{f: f, seen: map[[2]string]bool{}}
		for off := 0; off < good; {
			nl := bytes.IndexByte(data[off:], '\n')
			var e ev
			_ = json.Unmarshal(data[off:off+nl], &e)
			if [2]string{e.Topic, e.EventID} != lost {
				s.apply(e)
			}
			off += nl + 1
		}
	}
	if good < len(data) {
		log.Printf("repair: truncating %d torn bytes", len(data)-good)
		if err := f.Truncate(int64(good)); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		var evs []ev
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") == "application/x-ndjson" {
			sc := bufio.NewScanner(bytes.NewReader(body))
			sc.Buffer(nil, 1<<24)
			for sc.Scan() {
				var e ev
				if json.Unmarshal(sc.Bytes(), &e) != nil {
					http.Error(w, `{"error":"bad"}`, 400)
					return
				}
				evs = append(evs, e)
			}
		} else if len(body) > 0 && body[0] == '[' {
			if json.Unmarshal(body, &evs) != nil {
				http.Error(w, `{"error":"bad"}`, 400)
				return
			}
		} else {
			var e ev
			if json.Unmarshal(body, &e) != nil {
				http.Error(w, `{"error":"bad"}`, 400)
				return
			}
			evs = []ev{e}
		}
		var buf []byte
		for _, e := range evs {
			b, _ := json.Marshal(e)
			buf = append(append(buf, b...), '\n')
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, err := s.f.Write(buf); err != nil {
			http.Error(w, `{"error":"write"}`, 503)
			return
		}
		if err := s.f.Sync(); err != nil {
			http.Error(w, `{"error":"sync"}`, 503)
			return
		}
		first := s.received + 1
		for _, e := range evs {
			s.apply(e)
		}
		fmt.Fprintf(w, `{"enqueued":%d,"first_offset":%d,"last_offset":%d}`, len(evs), first, s.received)
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		from, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
		end := min(from+max(limit, 1), len(s.events))
		page := map[string]any{"events": s.events[from:end], "next_cursor": nil}
		if end < len(s.events) {
			page["next_cursor"] = strconv.Itoa(end)
		}
		_ = json.NewEncoder(w).Encode(page)
	})
	mux.HandleFunc("GET /feed", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.Atoi(r.URL.Query().Get("after"))
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		deadline := time.Now().Add(wait)
		for {
			s.mu.Lock()
			if after < len(s.events) || !time.Now().Before(deadline) {
				end := min(after+max(limit, 1), len(s.events))
				page := s.events[min(after, end):end]
				next := after
				if len(page) > 0 {
					next = int(page[len(page)-1].Seq)
				}
				_ = json.NewEncoder(w).Encode(map[string]any{"events": page, "next_after": next})
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			time.Sleep(5 * time.Millisecond) // a fake: polls instead of being woken
		}
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		counts := map[string]uint64{}
		var topics []string
		for _, e := range s.events {
			if counts[e.Topic] == 0 {
				topics = append(topics, e.Topic)
			}
			counts[e.Topic]++
		}
		slices.Sort(topics)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"received": s.received, "unique_processed": len(s.events), "duplicate_dropped": s.dups,
			"last_seq": len(s.events),
			"topics":   topics, "topic_counts": counts,
			"wal": map[string]any{"first_offset": 1, "last_offset": s.received, "checkpoint": s.received, "lag": 0},
		})
	})
	srv := &http.Server{Addr: *addr, Handler: mux}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		if fault == "sigterm-exit-1" {
			os.Exit(1)
		}
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	_ = f.Close()
}
