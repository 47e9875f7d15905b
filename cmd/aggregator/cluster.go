package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/natslog"
	"github.com/aggregator-dev/aggregator/wal"
	"github.com/prometheus/client_golang/prometheus"
)

// eventLog is the log the server runs on: the local write-ahead log, or
// with --nats-url a JetStream stream shared by every node (docs/scale-out.md).
type eventLog interface {
	Appender
	dedup.Source
	// FirstOffset is the first offset the log still holds.
	FirstOffset() uint64
}

var (
	_ eventLog = (*wal.Log)(nil)
	_ eventLog = streamLog{}
)

// openEventLog opens the local log, or the stream when --nats-url is set.
func (s *Server) openEventLog(ctx context.Context, reg prometheus.Registerer) (eventLog, error) {
	if s.cfg.NATSURL == "" {
		return s.openLog(reg)
	}
	return s.openStream(ctx, reg)
}

// streamLog is the stream as the server's log: natslog.Log with its stats
// in the log's terms (no segments; bytes of one replica).
type streamLog struct{ *natslog.Log }

func (l streamLog) Stats() wal.Stats {
	st := l.Log.Stats()
	return wal.Stats{FirstOffset: st.FirstSeq, LastOffset: st.LastSeq, Bytes: int64(st.Bytes)}
}

// openStream connects to the NATS cluster and opens (or creates) the stream.
func (s *Server) openStream(ctx context.Context, reg prometheus.Registerer) (eventLog, error) {
	cfg := s.cfg
	node, err := nodeID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	l, err := natslog.Open(ctx, &natslog.Options{
		URLs:           cfg.natsURLs(),
		Stream:         cfg.NATSStream,
		Replicas:       cfg.NATSReplicas,
		MaxBytes:       cfg.NATSMaxBytes,
		MaxBatch:       cfg.NATSMaxBatch,
		MaxInflight:    cfg.NATSMaxInflight,
		PurgeInterval:  cfg.NATSPurgeInterval,
		PinTTL:         cfg.NATSPinTTL,
		NodeID:         node,
		Logger:         s.logger.With("component", "natslog"),
		Registerer:     reg,
		ConnectTimeout: cfg.NATSConnectTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	s.onClose("close stream", l.Close)
	st := l.Stats()
	s.logger.Info("log is the NATS stream", "stream", cfg.NATSStream, "node", node,
		"first_offset", st.FirstSeq, "last_offset", st.LastSeq)
	return streamLog{l}, nil
}

// nodeIDFile holds the node's name in the checkpoint bucket. It lives in
// the data directory, so a node restored from a peer's index into a new
// directory is a new node, and one that keeps its directory keeps its name.
const nodeIDFile = "node-id"

// nodeID reads the node's id from the data directory, creating a random one
// at the first start (written to a temporary file, fsynced, renamed, the
// directory fsynced).
func nodeID(dir string) (string, error) {
	path := filepath.Join(dir, nodeIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("node id: %w", err)
	}
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = wal.SyncDir(dir)
	}
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// natsURLs splits --nats-url.
func (c *Config) natsURLs() []string {
	var urls []string
	for _, u := range strings.Split(c.NATSURL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}
