package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestClusterFlags(t *testing.T) {
	env := envOf(map[string]string{"AGG_NATS_URL": "nats://127.0.0.1:4222, nats://127.0.0.1:4223", "AGG_NATS_REPLICAS": "5"})
	c, err := parseConfig([]string{"--nats-stream", "EVENTS", "--nats-purge-interval", "-1s"}, env, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.natsURLs(); len(got) != 2 || got[1] != "nats://127.0.0.1:4223" {
		t.Fatalf("urls %q", got)
	}
	if c.NATSStream != "EVENTS" || c.NATSReplicas != 5 || c.NATSPurgeInterval != -time.Second || c.NATSMaxBatch != 1000 {
		t.Fatalf("cluster config %+v", c)
	}
	_, err = parseConfig([]string{"--nats-url", "nats://127.0.0.1:4222", "--wal-repair"}, envOf(nil), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--wal-repair") {
		t.Fatalf("--wal-repair with --nats-url: %v, want a refusal", err)
	}
	if c, err := parseConfig(nil, envOf(nil), &bytes.Buffer{}); err != nil || c.NATSURL != "" || len(c.natsURLs()) != 0 {
		t.Fatalf("no --nats-url: %q %v (the local WAL is the default)", c.NATSURL, err)
	}
}

func TestNodeIDIsKeptInTheDataDir(t *testing.T) {
	dir := t.TempDir()
	id, err := nodeID(dir)
	if err != nil || len(id) != 16 {
		t.Fatalf("node id %q, %v", id, err)
	}
	again, err := nodeID(dir)
	if err != nil || again != id {
		t.Fatalf("second start: %q, %v, want %q", again, err, id)
	}
	if _, err := os.Stat(filepath.Join(dir, nodeIDFile+".tmp")); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	other, _ := nodeID(t.TempDir())
	if other == id {
		t.Fatal("two data directories, one node id")
	}
}
