#!/usr/bin/env bash
# CPU per request of each of the gateway's threads (shard, audit writer,
# usage writer, ...) at a fixed open-loop rate, from each thread's
# /proc/PID/task/TID/schedstat (nanoseconds): where a feature's cost lands
# when it runs off the shards. A key and a policy, without and with the
# audit log (log_prompts: metadata_only), in turn.
#
#   bench/thread-cpu.sh [--rate 8000] [--duration 8] [--rounds 2]
#       [--audit-fsync 100ms] [--baseline BIN] [--no-build]
#
# --baseline runs the key+policy gateway from BIN (an older build) and the
# audit gateway from this tree. The gateway gets CPU 1 to itself; the mock
# and the load generator share CPU 0 (2 CPUs needed).
set -euo pipefail

RATE=8000
DURATION=8
ROUNDS=2
FSYNC=100ms
BASELINE=
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --audit-fsync) FSYNC=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init thread-cpu
cd "$ROOT"
build_release
(($(nproc) >= 2)) || { log "needs 2 CPUs"; exit 1; }

taskset -c 0 "$BENCH" mock --listen 127.0.0.1:0 >"$WORK/mock.out" 2>"$WORK/mock.err" &
PIDS+=($!)
MOCK_PORT=$(wait_port "$WORK/mock.out" "mock listening on" "${PIDS[0]}")

# Per thread: id, name and nanoseconds on a CPU so far.
snapshot() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "${t##*/} $(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"
  done
}

# measure NAME BIN EXTRA_YAML
measure() {
  local name=$1 bin=$2 extra=$3
  cat >"$WORK/$name.yaml" <<EOF
listen: 127.0.0.1:0
shards: 1
store: { dir: $WORK/$name-data }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1" }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
$(bench_policy)
$extra
EOF
  local key pid port requests
  key=$(create_key "$bin" "$WORK/$name.yaml")
  taskset -c 1 "$bin" serve --config "$WORK/$name.yaml" --no-pin \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  pid=$!
  PIDS+=("$pid")
  port=$(wait_port "$WORK/$name.out" "shardgate listening on" "$pid")
  local load=("$BENCH" run --url "http://127.0.0.1:$port/v1/chat/completions" --api-key "$key"
    --rate "$RATE" --connections 256 --max-tokens 16)
  taskset -c 0 "${load[@]}" --duration 2s >/dev/null 2>&1 || true
  snapshot "$pid" >"$WORK/before"
  requests=$(taskset -c 0 "${load[@]}" --duration "${DURATION}s" 2>&1 \
    | grep -oE '^requests: [0-9]+' | grep -oE '[0-9]+$')
  snapshot "$pid" >"$WORK/after"
  echo "$name ($bin): $requests requests at $RATE/s"
  join <(sort "$WORK/before") <(sort "$WORK/after") | awk -v n="$requests" '
    { d = $5 - $3; if (d > 0) printf "  %-18s %8.3f us/request\n", $2, d / n / 1000; t += d }
    END { printf "  %-18s %8.3f us/request\n", "all threads", t / n / 1000 }'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  log "round $round/$ROUNDS"
  measure policy "${BASELINE:-$GATEWAY_BIN}" ""
  measure audit "$GATEWAY_BIN" "      audit: { log_prompts: metadata_only }
audit: { fsync: $FSYNC }"
done
