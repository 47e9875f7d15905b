package main

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, envOf(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c != defaultConfig() {
		t.Fatalf("no flags, no env: %+v, want the defaults %+v", c, defaultConfig())
	}
	if c.Addr != ":8080" || c.DataDir != "./data" || c.MaxBodyBytes != 8<<20 || c.MaxBatchEvents != 10_000 {
		t.Fatalf("documented defaults changed: %+v", c)
	}
}

func TestParseConfigEnvAndFlags(t *testing.T) {
	env := envOf(map[string]string{
		"AGG_ADDR":             "127.0.0.1:9000",
		"AGG_DATA_DIR":         "/env/dir",
		"AGG_LOG_FORMAT":       "json",
		"AGG_LOG_LEVEL":        "debug",
		"AGG_SEGMENT_SIZE":     "1048576",
		"AGG_BLOOM_FP_RATE":    "0.001",
		"AGG_MAX_BATCH_EVENTS": "500",
		"AGG_WAL_REPAIR":       "true",
		"AGG_SHUTDOWN_TIMEOUT": "3s",
	})
	c, err := parseConfig([]string{"--data-dir", "/flag/dir", "-max-batch-events=7"}, env, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9000" || c.DataDir != "/flag/dir" || c.LogFormat != "json" || c.LogLevel != slog.LevelDebug ||
		c.SegmentSize != 1<<20 || c.BloomFPRate != 0.001 || c.MaxBatchEvents != 7 || !c.WALRepair ||
		c.ShutdownTimeout != 3*time.Second {
		t.Fatalf("env must fill what flags do not set, flags win: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--bogus"}, nil, "bogus"},
		{[]string{"--log-format", "xml"}, nil, "log format"},
		{[]string{"--log-level", "loud"}, nil, "log level"},
		{[]string{"--bloom-fp-rate", "0.9"}, nil, "bloom"},
		{[]string{"--max-body-bytes", "-1"}, nil, "max body bytes"},
		{[]string{"--addr", ""}, nil, "addr"},
		{[]string{"extra"}, nil, "unexpected argument"},
		{nil, map[string]string{"AGG_MAX_BATCH_EVENTS": "many"}, "AGG_MAX_BATCH_EVENTS"},
		{nil, map[string]string{"AGG_READ_TIMEOUT": "5"}, "AGG_READ_TIMEOUT"},
	}
	for _, tc := range cases {
		_, err := parseConfig(tc.args, envOf(tc.env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want one mentioning %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestHelpListsEveryFlagWithItsEnv(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"--help"}, envOf(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"-addr", "$AGG_ADDR", "-data-dir", "$AGG_DATA_DIR", "-log-format", "-segment-size",
		"-bloom-expected-keys", "-bloom-fp-rate", "-chunk-entries", "-max-body-bytes", "-max-batch-events",
		"-max-payload-bytes", "-max-payload-depth", "-max-lag", "$AGG_MAX_LAG"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, envOf(nil), &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Usage: aggregator") || stderr.Len() != 0 {
		t.Errorf("--help exits %d, stdout %d bytes, stderr %q: want 0 with the usage on stdout", code, stdout.Len(), stderr.String())
	}
	stdout.Reset()
	if code := run([]string{"--nope"}, envOf(nil), &stdout, &stderr); code != 2 || stdout.Len() != 0 || !strings.Contains(stderr.String(), "nope") {
		t.Errorf("bad flag exits %d, want 2", code)
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	// AGG_VERSION is not the --version flag: a container may well set it.
	if code := run([]string{"--version"}, envOf(map[string]string{"AGG_VERSION": "x"}), &stdout, &stderr); code != 0 {
		t.Fatalf("--version exits %d: %s", code, stderr.String())
	}
	if out := stdout.String(); !strings.HasPrefix(out, "aggregator ") || !strings.Contains(out, "go1.") || stderr.Len() != 0 {
		t.Fatalf("--version printed %q (stderr %q)", out, stderr.String())
	}
	if _, err := parseConfig(nil, envOf(map[string]string{"AGG_VERSION": "true"}), &stdout); err != nil {
		t.Fatalf("AGG_VERSION set: %v", err)
	}
}

func TestParseConfigInputFlags(t *testing.T) {
	c, err := parseConfig([]string{"--cors-origin", "https://a.example, http://localhost:3000", "--max-inflight-body-bytes", "16777216"},
		envOf(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got := splitList(c.CORSOrigins); len(got) != 2 || got[1] != "http://localhost:3000" || c.MaxInflightBodyBytes != 16<<20 {
		t.Fatalf("config %+v", c)
	}
	if d := defaultConfig(); d.MaxInflightBodyBytes != 256<<20 || d.ShutdownTimeout >= 10*time.Second {
		t.Fatalf("defaults: body budget %d, shutdown timeout %v (must stay under docker stop's 10s)", d.MaxInflightBodyBytes, d.ShutdownTimeout)
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"--cors-origin", "*"}},
		{[]string{"--cors-origin", "https://a.example/path"}},
		{[]string{"--max-inflight-body-bytes", "1000"}}, // below --max-body-bytes
	} {
		if _, err := parseConfig(tc.args, envOf(nil), &bytes.Buffer{}); err == nil {
			t.Errorf("%v: accepted", tc.args)
		}
	}
}
