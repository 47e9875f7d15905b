// Command zstd-estimate measures what zstd compression of the payloads at
// rest would save in an index: it reads every stored event of an index.db
// (read-only; the server must be stopped, or give it a copy) and compresses
// each payload on its own, as a per-value compression in the events bucket
// would have to (a value is read alone), at zstd's default level, without
// and with a dictionary trained on a sample of the payloads.
//
// It is a module of its own so that the aggregator does not depend on
// github.com/klauspost/compress for a measurement:
//
//	cd bench/zstd-estimate && go run . -index /path/to/copy/of/index.db
//
// The payloads of loadgen are a repeating alphabet and compress far better
// than real ones: measure a copy of a production index.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/klauspost/compress/dict"
	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"
)

func main() {
	path := flag.String("index", "index.db", "index file (format 3)")
	limit := flag.Int("limit", 1_000_000, "events to read at most")
	sample := flag.Int("sample", 2000, "payloads the dictionary is trained on")
	flag.Parse()
	payloads, values, err := readPayloads(*path, *limit)
	if err != nil {
		log.Fatal(err)
	}
	if len(payloads) == 0 {
		log.Fatal("no events")
	}
	var raw int
	for _, p := range payloads {
		raw += len(p)
	}
	plain, tookPlain := compressAll(payloads, nil)
	fmt.Printf("events %d, event values %d bytes (%.0f per event), payloads %d bytes (%.0f per event)\n",
		len(payloads), values, float64(values)/float64(len(payloads)), raw, float64(raw)/float64(len(payloads)))
	fmt.Printf("zstd per payload, no dictionary: %d bytes (%.1f%% of the payloads), %.0f ns per payload\n",
		plain, 100*float64(plain)/float64(raw), float64(tookPlain.Nanoseconds())/float64(len(payloads)))
	d, err := dict.BuildZstdDict(payloads[:min(*sample, len(payloads))], dict.Options{MaxDictSize: 16 << 10, HashBytes: 6})
	if err != nil {
		fmt.Printf("no dictionary: %v\n", err)
		return
	}
	withDict, tookDict := compressAll(payloads, d)
	fmt.Printf("zstd per payload, %d-byte dictionary: %d bytes (%.1f%% of the payloads), %.0f ns per payload\n",
		len(d), withDict, 100*float64(withDict)/float64(raw), float64(tookDict.Nanoseconds())/float64(len(payloads)))
}

// readPayloads returns the payloads of up to limit stored events and the
// bytes of their values.
func readPayloads(path string, limit int) ([][]byte, int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	var out [][]byte
	values := 0
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("events"))
		if b == nil {
			return fmt.Errorf("%s: no events bucket (not an index of format 3)", path)
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			// Value: version, offset, apply time (17 bytes), then the event.
			if len(v) < 17 {
				return fmt.Errorf("seq %d: short value", binary.BigEndian.Uint64(k))
			}
			e, err := event.Decode(v[17:])
			if err != nil {
				return err
			}
			out = append(out, append([]byte(nil), e.Payload...))
			values += len(k) + len(v)
		}
		return nil
	})
	return out, values, err
}

// compressAll compresses each payload alone and returns the total size.
func compressAll(payloads [][]byte, d []byte) (int, time.Duration) {
	opts := []zstd.EOption{zstd.WithEncoderConcurrency(1)}
	if d != nil {
		opts = append(opts, zstd.WithEncoderDict(d))
	}
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer enc.Close()
	start := time.Now()
	total := 0
	var buf []byte
	for _, p := range payloads {
		buf = enc.EncodeAll(p, buf[:0])
		total += len(buf)
	}
	return total, time.Since(start)
}
