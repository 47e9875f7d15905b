package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the fuzz seed corpus in testdata/fuzz")

// encodeEntry is a record as tidwall/wal stores it: uvarint length, frame.
func encodeEntry(offset uint64, flags byte, body []byte) []byte {
	frame := appendFrame(nil, offset, flags, body)
	return append(binary.AppendUvarint(nil, uint64(len(frame))), frame...)
}

func TestRecordRoundTrip(t *testing.T) {
	for _, body := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("ab"), 300)} {
		e := encodeEntry(42, flagBatchStart, body)
		got, n, flags, err := decodeRecord(e, 42)
		if err != nil || n != len(e) || flags != flagBatchStart || !bytes.Equal(got, body) {
			t.Fatalf("decode(%q): %q %d %d %v", body, got, n, flags, err)
		}
		if _, _, _, err := decodeRecord(e, 43); !errors.Is(err, errBadOffset) {
			t.Fatalf("record at the wrong offset: %v", err)
		}
		for i := range e {
			if _, _, _, err := decodeRecord(e[:i], 42); err == nil {
				t.Fatalf("record cut to %d of %d bytes decoded", i, len(e))
			}
			for bit := range 8 {
				c := bytes.Clone(e)
				c[i] ^= 1 << bit
				if _, n, _, err := decodeRecord(c, 42); err == nil && n == len(e) {
					t.Fatalf("bit %d of byte %d flipped and the record still decodes", bit, i)
				}
			}
		}
	}
}

// seedEntries are the seed inputs of both fuzz targets.
func seedEntries() map[string][]byte {
	two := append(encodeEntry(1, flagBatchStart, []byte("first")), encodeEntry(2, 0, []byte("second"))...)
	return map[string][]byte{
		"valid-empty-body":  encodeEntry(1, flagBatchStart, nil),
		"valid-event":       encodeEntry(1, flagBatchStart, []byte("\x01\x05topic\x02id\x03src\x80\x80\x80\x80\x0c\x00{\"k\":1}")),
		"valid-two-records": two,
		"torn":              two[:len(two)-3],
		"zeroes":            make([]byte, 64),
		"garbage":           []byte("\x17garbage that is not a record at all, \xff\xfe\x00\x01"),
		"huge-length":       binary.AppendUvarint(nil, 1<<62),
		"bad-varint":        bytes.Repeat([]byte{0xff}, 11),
		"bad-flags":         encodeEntry(1, 0x80, []byte("flags")),
	}
}

func TestFuzzCorpus(t *testing.T) {
	seeds := seedEntries()
	for target, args := range map[string]func([]byte) string{
		"FuzzDecodeRecord": func(b []byte) string { return fmt.Sprintf("[]byte(%q)\nuint64(1)\n", b) },
		"FuzzScanSegment":  func(b []byte) string { return fmt.Sprintf("[]byte(%q)\n", b) },
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, b := range seeds {
			path := filepath.Join(dir, name)
			content := "go test fuzz v1\n" + args(b)
			if *updateCorpus {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != content {
				t.Fatalf("seed %s is missing or stale (run go test -run TestFuzzCorpus -update-corpus): %v", path, err)
			}
		}
	}
}

// FuzzDecodeRecord: the decoder never panics, never reads past its input,
// and whatever it accepts is exactly what the encoder writes.
func FuzzDecodeRecord(f *testing.F) {
	for _, b := range seedEntries() {
		f.Add(b, uint64(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, offset uint64) {
		body, n, flags, err := decodeRecord(data, offset)
		if err != nil {
			return
		}
		if n > len(data) {
			t.Fatalf("decoded %d bytes of %d", n, len(data))
		}
		if again := encodeEntry(offset, flags, body); !bytes.Equal(again, data[:n]) {
			t.Fatalf("accepted %x, re-encoded %x", data[:n], again)
		}
	})
}

// FuzzScanSegment: the segment scanner and the torn-tail analysis never
// panic, and the intact prefix they find scans clean on its own.
func FuzzScanSegment(f *testing.F) {
	for _, b := range seedEntries() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		count, good, err := scanSegment(data, 1)
		if good > len(data) || (err == nil) != (good == len(data)) {
			t.Fatalf("scan: count %d good %d of %d, err %v", count, good, len(data), err)
		}
		c2, g2, err2 := scanSegment(data[:good], 1)
		if c2 != count || g2 != good || err2 != nil {
			t.Fatalf("rescan of the intact prefix: %d %d %v, want %d %d nil", c2, g2, err2, count, good)
		}
		if err != nil {
			laterCommit(data, good, 1+uint64(count))
		}
	})
}
