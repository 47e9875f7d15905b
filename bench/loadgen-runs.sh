#!/usr/bin/env bash
# The end-to-end runs of docs/performance.md: cmd/loadgen against the real binary on 127.0.0.1.
# Build first: go build -o /tmp/perf/aggregator ./cmd/aggregator && go build -o /tmp/perf/loadgen ./cmd/loadgen
# usage: bench/loadgen-runs.sh <aggregator-binary> <loadgen-binary> <out.jsonl> [grid|one ARGS...|sustained|stress|rss|backlog]
# Each run gets a fresh data dir and a fresh server process (SIGTERM after the run).
set -euo pipefail
AGG=$1; LG=$2; OUT=$3; MODE=${4:-grid}; shift 4 || true
PORT=${PORT:-18480}
BASE=http://127.0.0.1:$PORT
WORK=${WORK:-/tmp/perf/work}

wait_url() { # bounded: 30 s
  for i in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "no answer from $1" >&2; exit 1
}
start_server() {
  rm -rf "$WORK/data"; mkdir -p "$WORK"
  "$AGG" --addr 127.0.0.1:$PORT --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
  SPID=$!
  for i in $(seq 1 300); do
    curl -sf "$BASE/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "server not ready" >&2; kill -9 $SPID; exit 1
}
stop_server() {
  kill -TERM $SPID; for i in $(seq 1 200); do kill -0 $SPID 2>/dev/null || break; sleep 0.05; done
  kill -9 $SPID 2>/dev/null || true; wait $SPID 2>/dev/null || true
}

one() { # label, loadgen publish args...
  local label=$1; shift
  start_server
  local line load
  load=$(cut -d' ' -f1 /proc/loadavg)
  line=$("$LG" publish --target "$BASE" --json "$@" 2>>"$WORK/loadgen.err" || true)
  stop_server
  echo "{\"label\":\"$label\",\"args\":\"$*\",\"load1\":$load,\"result\":${line:-null}}" >>"$OUT"
  echo "$label: $(echo "$line" | head -c 300)"
}

case $MODE in
grid)
  for conc in 1 16 64; do for batch in 1 100; do for payload in 256 4096; do for fmt in array ndjson; do
    if [ $batch = 1 ]; then ev=$(( conc == 1 ? 20000 : 100000 )); else ev=$(( payload == 256 ? 600000 : 200000 )); fi
    for run in 1 2 3; do
      one "c$conc b$batch p$payload $fmt" --concurrency $conc --batch $batch --payload $payload \
        --format $fmt --dup 0.2 --events $ev --duration 10s --seed $run
    done
  done; done; done; done ;;
one) one "$@" ;;
sustained)
  for run in 1 2 3; do
    one "sustained 60s c16 b100 p256 array" --concurrency 16 --batch 100 --payload 256 --dup 0.2 \
      --events ${SUSTAINED_EVENTS:-6000000} --duration 60s --lag-interval 1s --seed $run
  done ;;
stress)
  for run in 1 2 3; do
    one "stress 5000-event batch, 20% dup in the batch" --concurrency 1 --batch 5000 --events 5000 \
      --dup 0.2 --dup-same-request --lag-interval 2ms --seed $run
  done ;;
rss)
  # Resident memory of the server every 1M unique events up to ${RSS_MILLIONS:-10}M, then a restart on that data.
  D=$WORK/rss; rm -rf "$D"; mkdir -p "$D"
  "$AGG" --addr 127.0.0.1:$PORT --data-dir "$D" >"$WORK/server.log" 2>&1 & SPID=$!
  wait_url "$BASE/readyz"
  for m in $(seq 1 ${RSS_MILLIONS:-10}); do
    "$LG" publish --target "$BASE" --events 1250000 --batch 100 --concurrency 16 --dup 0.2 --run-id m$m --json --lag-interval 1s >>"$OUT" 2>/dev/null
    for i in $(seq 1 600); do curl -s "$BASE/stats" | grep -q '"lag":0[,}]' && break; sleep 0.1; done
    echo "{\"unique_millions\":$m,\"rss_kb\":$(awk '/VmRSS/{print $2}' /proc/$SPID/status),\"anon_kb\":$(awk '/RssAnon/{print $2}' /proc/$SPID/status),\"file_kb\":$(awk '/RssFile/{print $2}' /proc/$SPID/status),\"data_bytes\":$(du -sb "$D" | cut -f1)}" | tee -a "$OUT"
  done
  stop_server
  for run in 1 2 3; do "$LG" startup --server "$AGG" --data-dir "$D" --json 2>/dev/null | tee -a "$OUT"; done ;;
backlog)
  # 1M unique events in the index, then 100k events appended to the log while the
  # consumer cannot run (the index file lock is held by flock(1)), then kill -9 and
  # measure start -> ready and start -> lag 0 with `loadgen startup`.
  D=$WORK/backlog; rm -rf "$D"; mkdir -p "$D"
  "$AGG" --addr 127.0.0.1:$PORT --data-dir "$D" >"$WORK/server.log" 2>&1 & SPID=$!
  wait_url "$BASE/readyz"
  "$LG" publish --target "$BASE" --events 1250000 --batch 100 --concurrency 16 --dup 0.2 --run-id base --json --lag-interval 1s
  echo "RSS after 1M unique published: $(grep VmRSS /proc/$SPID/status)"
  stop_server
  echo "--- 1M in index, nothing waiting:"
  for run in 1 2 3; do "$LG" startup --server "$AGG" --data-dir "$D" --json; done
  flock -x "$D/index.db" sleep 600 & LPID=$!
  sleep 0.2
  "$AGG" --addr 127.0.0.1:$PORT --data-dir "$D" --lock-timeout 10m >"$WORK/server2.log" 2>&1 & SPID=$!
  wait_url "$BASE/healthz"
  "$LG" publish --target "$BASE" --events 100000 --batch 100 --concurrency 16 --dup 0 --run-id waiting --json
  curl -s "$BASE/stats"; echo
  kill -9 $SPID; wait $SPID 2>/dev/null || true; kill $LPID; wait $LPID 2>/dev/null || true
  rm -rf "$D.snap"; cp -a "$D" "$D.snap"
  echo "--- 1M in index, 100k waiting in the log:"
  for run in 1 2 3; do
    rm -rf "$D"; cp -a "$D.snap" "$D"
    "$LG" startup --server "$AGG" --data-dir "$D" --json
  done ;;
esac
