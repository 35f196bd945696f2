#!/usr/bin/env bash
# The Responses API against chat completions through one gateway, in one
# run, interleaved rounds, the gateway confined with taskset to its CPU:
#
#   chat               POST /v1/chat/completions, passed through to the
#                      mock's OpenAI dialect (the baseline)
#   responses          POST /v1/responses, passed through to the mock's
#                      own /v1/responses (only `model` patched), on a
#                      gateway that keeps no turns
#                      (`store.responses_max_bytes: 0`)
#   responses+store    the same on a gateway that keeps every turn (the
#                      API's default `store: true`)
#   responses->claude  POST /v1/responses to an Anthropic-dialect target:
#                      translated to chat, to Messages and back
#
# Throughput and CPU per request (the gateway's, from /proc) at
# --connections, non-streaming; then the same streaming at a fixed
# open-loop --rate (paced tokens, as models stream).
#
#   bench/compare-responses.sh [--rounds 3] [--duration 5s] [--connections 64]
#       [--rate 200] [--no-build]
set -euo pipefail

ROUNDS=3
DURATION=5s
CONNECTIONS=64
RATE=200
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
bench_init compare-responses
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
  claude: { kind: anthropic, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
  claude: { targets: [ { provider: claude, model: mock-1 } ] }
YAML
sed -e "s#store: { dir: $WORK/gw-data }#store: { dir: $WORK/nostore-data, responses_max_bytes: 0 }#" \
  "$WORK/gw.yaml" >"$WORK/nostore.yaml"
start_gw() {
  taskset -c "$PROXY_CPUS" "$GATEWAY_BIN" serve --config "$WORK/$1.yaml" --no-pin \
    >"$WORK/$1.out" 2>"$WORK/$1.err" &
  local pid=$!
  PIDS+=("$pid")
  PORT=$(wait_port "$WORK/$1.out" "shardgate listening on" "$pid") \
    || { log "gateway $1 did not start"; cat "$WORK/$1.err" >&2; exit 1; }
  PID=$pid
}
start_gw nostore
BASE=http://127.0.0.1:$PORT GW_PID=$PID
start_gw gw
STORE=http://127.0.0.1:$PORT STORE_PID=$PID

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-responses-$(date +%Y%m%d-%H%M%S)
TARGETS=(
  --target "chat=$BASE/v1/chat/completions,pid=$GW_PID,model=demo"
  --target "responses=$BASE/v1/responses,pid=$GW_PID,model=demo"
  --target "responses+store=$STORE/v1/responses,pid=$STORE_PID,model=demo"
  --target "responses->claude=$BASE/v1/responses,pid=$GW_PID,model=claude"
)
CMD=(taskset -c "$LOAD_CPUS" "$BENCH" compare "${TARGETS[@]}" --rounds "$ROUNDS"
  --duration "$DURATION" --connections "$CONNECTIONS" --shards "$LOAD_SHARDS")
log "running: ${CMD[*]}"
"${CMD[@]}" --out "$OUT.json" | tee "$OUT.txt"
CMD_STREAM=("${CMD[@]}" --stream --rate "$RATE")
log "running: ${CMD_STREAM[*]}"
"${CMD_STREAM[@]}" --out "$OUT-stream.json" | tee -a "$OUT.txt"
echo "command: bench/compare-responses.sh --rounds $ROUNDS --duration $DURATION --connections $CONNECTIONS --rate $RATE" >>"$OUT.txt"
log "results: $OUT.txt"
