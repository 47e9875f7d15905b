#!/usr/bin/env bash
# The data lifecycle measurements of docs/operations.md: retention at 100,000 events/s, a backup of a
# 1 GB index while publishing, and index bytes per stored event after compaction. Run them only on a
# quiet machine (the figures are worthless beside other work on 2 cores).
#
# Build first:
#   go build -o /tmp/perf/aggregator ./cmd/aggregator && go build -o /tmp/perf/loadgen ./cmd/loadgen
#   (cd bench/zstd-estimate && go build -o /tmp/perf/zstd-estimate .)
# usage: bench/lifecycle-runs.sh <aggregator> <loadgen> <out.jsonl> retention|backup|size
#   retention: the same paced run (--rate 100000, 1 topic, 256-byte payloads, 20% duplicates) with
#              --retain-events 1000000 and without; index.db's size and /stats every 5 s; then both
#              unpaced, for the publish capacity with and without expiry.
#   backup:    an index of >= 1 GB, then publishing at 100,000 events/s while GET /admin/backup streams
#              it: the backup's time, and the publish latency histogram (/metrics) over the backup's
#              window next to the same length of time before it; the consumer lag sampled meanwhile;
#              the backup restored and checked.
#   size:      N events (SIZE_EVENTS, default 2,000,000; 20% duplicates), then compact: index.db bytes
#              per stored event next to the JSON bytes of an event, and the zstd estimate.
set -euo pipefail
AGG=$1; LG=$2; OUT=$3; MODE=$4
PORT=${PORT:-18490}
BASE=http://127.0.0.1:$PORT
WORK=${WORK:-/tmp/perf/lifecycle}
DURATION=${DURATION:-60s}
mkdir -p "$WORK"

start_server() { # data dir, extra flags...
  local dir=$1; shift
  "$AGG" --addr 127.0.0.1:$PORT --data-dir "$dir" --log-level warn "$@" >>"$WORK/server.log" 2>&1 &
  SPID=$!
  for i in $(seq 1 600); do curl -sf "$BASE/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "server not ready" >&2; kill -9 $SPID; exit 1
}
stop_server() {
  kill -TERM $SPID; for i in $(seq 1 600); do kill -0 $SPID 2>/dev/null || break; sleep 0.05; done
  kill -9 $SPID 2>/dev/null || true; wait $SPID 2>/dev/null || true
}
wait_lag0() { for i in $(seq 1 3000); do curl -s "$BASE/stats" | grep -q '"lag":0[,}]' && return 0; sleep 0.1; done; }
size_of() { stat -c %s "$1/index.db"; }
# sample <dir> <label>: index size and counters every 5 s until the file $WORK/stop exists.
sample() {
  while [ ! -e "$WORK/stop" ]; do
    local st; st=$(curl -s "$BASE/stats" | head -c 400 | tr -d '\n')
    echo "{\"label\":\"$2\",\"t\":$(date +%s.%N),\"index_bytes\":$(size_of "$1"),\"stats\":${st:-null}}" >>"$OUT" || true
    sleep 5
  done
}
# hist <file>: the publish latency histogram of /metrics (status 200) into file.
hist() { curl -s "$BASE/metrics" | grep '^aggregator_publish_request_duration_seconds_bucket{code="200"' >"$1"; }
# p99 <before> <after>: the 99th percentile of the requests between two histograms (upper bucket bound).
p99() {
  python3 - "$1" "$2" <<'EOF'
import re, sys
def read(p):
    out = {}
    for line in open(p):
        m = re.search(r'le="([^"]+)"\} (\S+)', line)
        if m: out[float('inf') if m.group(1) == '+Inf' else float(m.group(1))] = float(m.group(2))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
d = sorted((le, b[le] - a.get(le, 0)) for le in b)
total = d[-1][1]
for le, n in d:
    if total and n >= 0.99 * total:
        print('{"requests":%d,"p99_le_s":%s}' % (total, le if le != float('inf') else '"+Inf"')); break
else:
    print('{"requests":0}')
EOF
}

retention_run() { # label, extra publish flags, server flags...
  local label=$1 pub=$2; shift 2
  local dir=$WORK/data-$label; rm -rf "$dir" "$WORK/stop"
  start_server "$dir" "$@"
  sample "$dir" "$label" & local SAMPLER=$!
  local line; line=$("$LG" publish --target "$BASE" --json --topics 1 --payload 256 --dup 0.2 --batch 100 \
    --concurrency 16 --lag-interval 1s --duration "$DURATION" $pub 2>>"$WORK/loadgen.err" || true)
  touch "$WORK/stop"; wait $SAMPLER 2>/dev/null || true
  echo "{\"label\":\"$label\",\"server_flags\":\"$*\",\"index_bytes_end\":$(size_of "$dir"),\"result\":${line:-null}}" | tee -a "$OUT"
  stop_server
}

case $MODE in
retention)
  for run in 1 2; do
    retention_run "paced-retain-1M-$run" "--rate 100000 --events 6000000 --seed $run" --retain-events 1000000
    retention_run "paced-no-retention-$run" "--rate 100000 --events 6000000 --seed $run"
    retention_run "max-retain-1M-$run" "--events 6000000 --seed $run" --retain-events 1000000
    retention_run "max-no-retention-$run" "--events 6000000 --seed $run"
  done ;;
backup)
  dir=$WORK/data-backup; rm -rf "$dir" "$WORK/stop"
  start_server "$dir"
  until [ "$(size_of "$dir")" -ge 1073741824 ]; do
    "$LG" publish --target "$BASE" --json --payload 256 --dup 0 --batch 100 --concurrency 16 --events 1000000 \
      --lag-interval 1s >>"$OUT" 2>>"$WORK/loadgen.err"
    wait_lag0
  done
  echo "{\"label\":\"backup: index built\",\"index_bytes\":$(size_of "$dir"),\"stats\":$(curl -s "$BASE/stats" | head -c 400)}" | tee -a "$OUT"
  "$LG" publish --target "$BASE" --json --payload 256 --dup 0.2 --batch 100 --concurrency 16 --rate 100000 \
    --events 9000000 --duration 90s --lag-interval 500ms >"$WORK/backup-load.json" 2>>"$WORK/loadgen.err" & LPID=$!
  sleep 10; hist "$WORK/h0"; t0=$(date +%s.%N)
  sleep 20; hist "$WORK/h1"; t1=$(date +%s.%N)   # 20 s without a backup
  ( while [ ! -e "$WORK/stop" ]; do curl -s "$BASE/stats" | grep -o '"lag":[0-9]*' | head -1; sleep 0.5; done ) >"$WORK/lag-during-backup" &
  LAGP=$!
  curl -s -o "$WORK/index.backup" -D "$WORK/backup.headers" -w '{"backup_s":%{time_total},"bytes":%{size_download}}\n' \
    "$BASE/admin/backup" >"$WORK/backup.time"
  hist "$WORK/h2"; touch "$WORK/stop"; wait $LAGP || true
  wait $LPID || true
  echo "{\"label\":\"backup\",\"curl\":$(cat "$WORK/backup.time"),\"publish_before\":$(p99 "$WORK/h0" "$WORK/h1"),\"window_before_s\":$(echo "$t1 - $t0" | bc),\"publish_during\":$(p99 "$WORK/h1" "$WORK/h2"),\"lag_max_during\":$(sed 's/"lag"://' "$WORK/lag-during-backup" | sort -n | tail -1),\"load\":$(cat "$WORK/backup-load.json")}" | tee -a "$OUT"
  grep -i '^x-aggregator' "$WORK/backup.headers"
  stop_server
  rm -rf "$WORK/restored"
  /usr/bin/time -f '{"restore_s":%e,"rss_kb":%M}' "$AGG" restore --from "$WORK/index.backup" --data-dir "$WORK/restored" 2>&1 | tee -a "$OUT"
  "$AGG" check --data-dir "$WORK/restored" | tee -a "$WORK/check.out" ;;
size)
  dir=$WORK/data-size; rm -rf "$dir"
  start_server "$dir"
  "$LG" publish --target "$BASE" --json --payload 256 --dup 0.2 --batch 100 --concurrency 16 \
    --events "${SIZE_EVENTS:-2000000}" --lag-interval 1s 2>"$WORK/size-loadgen.err" | tee -a "$OUT"
  grep -o 'in [0-9]* requests of [0-9]* ([a-z]*, [0-9.]* MB)' "$WORK/size-loadgen.err" || true   # JSON bytes sent
  stop_server
  before=$(size_of "$dir")
  /usr/bin/time -f '{"compact_s":%e,"rss_kb":%M}' "$AGG" compact --data-dir "$dir" 2>&1 | tee -a "$OUT"
  after=$(size_of "$dir")
  stored=$("$AGG" check --data-dir "$dir" | grep -o 'stored [0-9]*' | cut -d' ' -f2)
  echo "{\"label\":\"size\",\"index_bytes_before\":$before,\"index_bytes_compacted\":$after,\"stored\":$stored,\"bytes_per_stored_event\":$((after / stored))}" | tee -a "$OUT"
  if [ -x "${ZSTD_ESTIMATE:-/tmp/perf/zstd-estimate}" ]; then "${ZSTD_ESTIMATE:-/tmp/perf/zstd-estimate}" -index "$dir/index.db" | tee -a "$WORK/zstd.out"; fi ;;
*) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
