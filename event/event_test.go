package event

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	cases := []Event{
		{Topic: "t", EventID: "e", Source: "s", Timestamp: time.Date(2025, 10, 20, 0, 0, 0, 0, time.UTC), Payload: []byte(`{}`)},
		{Topic: "ünïcode", EventID: "id-1", Source: "", Timestamp: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), Payload: []byte(`{"a":[1,2,3]}`)},
		{Topic: "x", EventID: "y", Source: "z", Timestamp: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), Payload: nil},
	}
	for _, want := range cases {
		b := want.AppendBinary(nil)
		if len(b) > want.EncodedSize() {
			t.Fatalf("EncodedSize %d < actual %d", want.EncodedSize(), len(b))
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		if got.Topic != want.Topic || got.EventID != want.EventID || got.Source != want.Source ||
			!got.Timestamp.Equal(want.Timestamp) || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("round trip: got %+v want %+v", got, want)
		}
		if got.Timestamp.Location() != time.UTC {
			t.Fatalf("timestamp not UTC: %v", got.Timestamp.Location())
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := (&Event{Topic: "t", EventID: "e", Source: "s", Timestamp: time.Unix(5, 6)}).AppendBinary(nil)
	for name, b := range map[string][]byte{
		"empty":       nil,
		"bad version": append([]byte{9}, good[1:]...),
		"cut topic":   good[:2],
		"cut time":    good[:len(good)-1],
	} {
		if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add((&Event{Topic: "t", EventID: "e", Source: "s", Timestamp: time.Unix(5, 6), Payload: []byte(`{"k":1}`)}).AppendBinary(nil))
	f.Add([]byte{1, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Decode(e.AppendBinary(nil))
		if err != nil || again.Topic != e.Topic || again.EventID != e.EventID || !again.Timestamp.Equal(e.Timestamp) {
			t.Fatalf("re-encode mismatch: %+v vs %+v (%v)", e, again, err)
		}
	})
}
