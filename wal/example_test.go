package wal_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/aggregator-dev/aggregator/wal"
)

func Example() {
	dir, err := os.MkdirTemp("", "wal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	l, err := wal.Open(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()

	// Durable (fsynced) when Append returns.
	first, last, err := l.Append(context.Background(), [][]byte{[]byte("a"), []byte("b")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("appended", first, "to", last)

	// A consumer waits for records after its checkpoint and reads them.
	checkpoint := uint64(0)
	if err := l.Wait(context.Background(), checkpoint); err != nil {
		log.Fatal(err)
	}
	err = l.Read(checkpoint+1, 100, func(offset uint64, data []byte) error {
		fmt.Printf("%d: %s\n", offset, data)
		checkpoint = offset
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Free the segments the consumer no longer needs.
	if err := l.TruncateFront(checkpoint + 1); err != nil {
		log.Fatal(err)
	}
	// Output:
	// appended 1 to 2
	// 1: a
	// 2: b
}
