#!/usr/bin/env bash
# The cluster-mode runs of docs/scale-out.md (Measurements): publish throughput, latency and CPU per event
# with 3 nats-servers and 1, 2 and 3 aggregator nodes, the servers' default sync and sync_interval: always.
# Run it only on a quiet machine: every process shares the cores.
# usage: bench/cluster-runs.sh <out.jsonl> [clusterbench flags...]   (e.g. -nodes 1,3 -sync always -events 300000)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/cluster-runs.sh out.jsonl [clusterbench flags]}; shift
BIN=${BIN:-/tmp/clusterbench-bin}
mkdir -p "$BIN"
CGO_ENABLED=0 go build -trimpath -o "$BIN/" ./cmd/aggregator ./cmd/loadgen
(cd cluster && CGO_ENABLED=0 go build -trimpath -o "$BIN/nats-server" github.com/nats-io/nats-server/v2 &&
	CGO_ENABLED=0 go build -trimpath -o "$BIN/clusterbench" ./cmd/clusterbench)
"$BIN/clusterbench" -nats-bin "$BIN/nats-server" -agg-bin "$BIN/aggregator" -loadgen-bin "$BIN/loadgen" "$@" | tee -a "$OUT"
