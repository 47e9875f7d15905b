//go:build ignore

// This program wrote dedup/testdata/format2/index.db, an index of format 2
// (the release before format 3), for the tests of dedup.Upgrade. It is run
// once, from a checkout of commit 234755c (the last commit of format 2):
//
//	git archive 234755c | tar -x -C /tmp/v2
//	cp dedup/testdata/format2/generate.go /tmp/v2/cmd/genv2/main.go
//	cd /tmp/v2 && go run ./cmd/genv2 /tmp/index.db
//
// It applies 40 chunks of events over 5 topics, with timestamps that do not
// follow the log order, duplicates within and across chunks, and malformed
// entries, so that the seen set has several runs and merges. The expected
// content is derived again by the test from the same rules (want below).
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
)

func main() {
	s, err := dedup.Open(os.Args[1], &dedup.Options{ExpectedKeys: 1000})
	if err != nil {
		panic(err)
	}
	off := uint64(1)
	for chunk := range 40 {
		es := make([]dedup.Entry, 10)
		for i := range es {
			es[i] = dedup.Entry{Offset: off, Event: gen(chunk*10 + i)}
			off++
		}
		if _, err := s.Apply(es); err != nil {
			panic(err)
		}
	}
	st, _ := s.Stats()
	fmt.Printf("%+v\n", st)
	if err := s.Close(); err != nil {
		panic(err)
	}
}

// gen is the event at offset n+1: a duplicate of the event 37 offsets
// earlier every 13th offset (across chunks), of the one before every 29th
// (within a chunk), malformed (no event_id) every 53rd, else a new event
// with a timestamp out of log order.
func gen(n int) event.Event {
	topics := []string{"orders", "logins", "a/b", "ü-topic", "x"}
	switch {
	case n%53 == 0:
		return event.Event{Topic: "orders", Timestamp: time.Unix(0, 0).UTC(), Source: "gen", Payload: []byte("{}")}
	case n%13 == 0 && n >= 37:
		return gen(n - 37)
	case n%29 == 0 && n%10 > 0:
		return gen(n - 1)
	}
	return event.Event{
		Topic:     topics[n%len(topics)],
		EventID:   fmt.Sprintf("id-%d", n),
		Timestamp: time.Date(2025, 10, 20, 12, 0, 0, 0, time.UTC).Add(time.Duration((n*7919)%1000) * time.Second),
		Source:    "gen",
		Payload:   []byte(fmt.Sprintf(`{"n":%d}`, n)),
	}
}
