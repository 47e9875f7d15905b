package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// validCases are JSON texts with encoding/json.Valid's answer for each
// checked too; they seed FuzzValidJSON.
var validCases = []string{
	``, ` `, `{}`, `[]`, ` [ ] `, `{"a":1}`, `{"a":1,}`, `{"a" 1}`, `{"a":}`, `{,}`, `[,]`, `[1,]`, `[1 2]`, `{"a":1 "b":2}`,
	`[1,2,[3,{"x":[]}]]`, `{"a":{"b":{"c":[true,false,null]}}}`, `{"a":[}`, `[{]}`, `{]`, `[}`, `{"a":1}}`, `[[]`, `]`,
	`0`, `-0`, `-`, `01`, `-01`, `1.`, `1.5`, `.5`, `1e`, `1e+`, `1e+5`, `1E-05`, `1.5e3`, `-1.0e-0`, `+1`, `1x`, `0x1`,
	`"`, `""`, `"a`, `"\"`, `"\\"`, `"\/\b\f\n\r\t"`, `"\u00e9"`, `"\u00G9"`, `"\u00e"`, `"\x"`, "\"a\tb\"", "\"\x01\"",
	"\"\x7f\"", "\"\xff\xfe\"", `"é"`, `true`, `tru`, `truex`, `false`, `fals`, `null`, `nul`, `nulll`, `nan`, `True`,
	"\t\n\r {\"a\" : [ 1 , 2 ] }\r\n", "\v1", "1\f", `{"a":1}{"b":2}`, `1 2`, `{"":""}`, `{1:2}`, `{"a":1,"a":2}`,
	`[[[{"a":[{"b":[]}]}]]]`, `{"a":[1,{"b":2},[3]],"c":"d\"}"}`,
}

// deepCases are at and one past the nesting bound, of both kinds.
var deepCases = []struct {
	text string
	want bool
}{
	{strings.Repeat(`[`, maxNesting) + strings.Repeat(`]`, maxNesting), true},
	{strings.Repeat(`[`, maxNesting+1) + strings.Repeat(`]`, maxNesting+1), false},
	{strings.Repeat(`{"a":`, maxNesting) + `1` + strings.Repeat(`}`, maxNesting), true},
	{strings.Repeat(`{"a":`, maxNesting+1) + `1` + strings.Repeat(`}`, maxNesting+1), false},
}

func TestValidJSON(t *testing.T) {
	for _, c := range validCases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%.60q) = %v, encoding/json.Valid says %v", c, got, want)
		}
	}
	// The bound is the one of encoding/json, and checked on both kinds.
	for _, c := range deepCases {
		if got := validJSON([]byte(c.text)); got != c.want || json.Valid([]byte(c.text)) != c.want {
			t.Errorf("nesting of %d bytes: valid %v, want %v (as encoding/json)", len(c.text), got, c.want)
		}
	}
}

// FuzzValidJSON holds validJSON to encoding/json.Valid's answer.
func FuzzValidJSON(f *testing.F) {
	for _, c := range validCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	var parts []string
	for i := range 100 {
		parts = append(parts, `{"topic":"orders","event_id":"evt-`+strings.Repeat("0", 8)+`","timestamp":"2025-10-20T12:00:00.123Z",`+
			`"source":"checkout","payload":{"order":`+strings.Repeat("7", i%9+1)+`,"amount":12.5,"items":["a","b"],"note":"`+
			strings.Repeat("abcdefghij", 20)+`","user":{"id":"u-1","tier":"gold","escaped":"\u00e9\n"}}}`)
	}
	body := []byte("[" + strings.Join(parts, ",") + "]")
	for _, c := range []struct {
		name  string
		valid func([]byte) bool
	}{{"validJSON", validJSON}, {"encoding-json", json.Valid}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if !c.valid(body) {
					b.Fatal("not valid")
				}
			}
		})
	}
}
