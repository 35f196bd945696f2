#!/usr/bin/env bash
# Response cache hits against the plain proxy path through one gateway, in
# one run, interleaved rounds, the gateway confined with taskset to its CPU:
#
#   proxy      POST /v1/chat/completions to a route without a cache, passed
#              through to the mock (the baseline)
#   cache-hit  the same request to a route with `cache: {sampled: true}`:
#              after the first request every one is a hit (no upstream call)
#
# Throughput and CPU per request (the gateway's, from /proc) at
# --connections (saturation), then at a fixed open-loop --rate (partial
# load), then streaming at that rate (a hit replays a stream).
#
#   bench/compare-cache.sh [--rounds 3] [--duration 5s] [--connections 64]
#       [--rate 5000] [--no-build]
set -euo pipefail

ROUNDS=3
DURATION=5s
CONNECTIONS=64
RATE=5000
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-cache
KEY=bench-upstream-key
cpu_layout 1 || { log "needs 2 CPUs"; exit 1; }
raise_nofile 65536
cd "$ROOT"
build_release

start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
cat >"$WORK/gw.yaml" <<YAML
listen: 127.0.0.1:0
auth: none
shards: 1
store: { dir: $WORK/gw-data }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
  cached: { targets: [ { provider: up, model: mock-1 } ], cache: { sampled: true } }
YAML
taskset -c "$PROXY_CPUS" "$GATEWAY_BIN" serve --config "$WORK/gw.yaml" --no-pin \
  >"$WORK/gw.out" 2>"$WORK/gw.err" &
PID=$!
PIDS+=("$PID")
PORT=$(wait_port "$WORK/gw.out" "shardgate listening on" "$PID") \
  || { log "gateway did not start"; cat "$WORK/gw.err" >&2; exit 1; }
BASE=http://127.0.0.1:$PORT

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-cache-$(date +%Y%m%d-%H%M%S)
TARGETS=(
  --target "proxy=$BASE/v1/chat/completions,pid=$PID,model=demo"
  --target "cache-hit=$BASE/v1/chat/completions,pid=$PID,model=cached"
)
CMD=(taskset -c "$LOAD_CPUS" "$BENCH" compare "${TARGETS[@]}" --rounds "$ROUNDS"
  --duration "$DURATION" --connections "$CONNECTIONS" --shards "$LOAD_SHARDS")
log "running: ${CMD[*]}"
"${CMD[@]}" --out "$OUT.json" | tee "$OUT.txt"
CMD_RATE=("${CMD[@]}" --rate "$RATE")
log "running: ${CMD_RATE[*]}"
"${CMD_RATE[@]}" --out "$OUT-rate.json" | tee -a "$OUT.txt"
CMD_STREAM=("${CMD_RATE[@]}" --stream)
log "running: ${CMD_STREAM[*]}"
"${CMD_STREAM[@]}" --out "$OUT-stream.json" | tee -a "$OUT.txt"
echo "command: bench/compare-cache.sh --rounds $ROUNDS --duration $DURATION --connections $CONNECTIONS --rate $RATE" >>"$OUT.txt"
log "results: $OUT.txt"
