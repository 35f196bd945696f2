#!/usr/bin/env bash
# What admission and the audit log cost: the same gateway config with auth
# off, with a key and a policy with limits (requests per minute, monthly
# spend), with a token limit too (so every request is tokenized), and with
# the key and policy plus the audit log (every request a sealed line, the
# policy's log_prompts at metadata_only), interleaved rounds in one run.
# Prints the table and writes JSON + text under bench/results/ (gitignored).
#
#   bench/compare-auth.sh [--rounds 5] [--duration 5s] [--warmup 1s]
#       [--connections 64] [--no-build] [--audit-only] [-- EXTRA COMPARE ARGS]
#
# --audit-only runs just the key+policy and key+policy+audit targets: the
# audit log's cost (issue 16's 0.97x) with twice the rounds' time on each.
#
# The gateways (one shard each) and the mock share the first half of the
# CPUs, the load generator gets the rest, as in compare-nginx.sh.
set -euo pipefail

ROUNDS=5
DURATION=5s
WARMUP=1s
CONNECTIONS=64
BUILD=1
AUDIT_ONLY=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --audit-only) AUDIT_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-auth

NPROC=$(nproc)
SERVER_PIN=() LOAD_PIN=() LOAD_SHARDS=1
if ((NPROC >= 2)) && command -v taskset >/dev/null; then
  SERVER_PIN=(taskset -c "0-$((NPROC / 2 - 1))")
  LOAD_PIN=(taskset -c "$((NPROC / 2))-$((NPROC - 1))")
  LOAD_SHARDS=$((NPROC - NPROC / 2))
fi

cd "$ROOT"
if ((BUILD)); then
  log "building release"
  cargo build --release -p shardgate-bench -p shardgate-core
fi

"${SERVER_PIN[@]}" "$BENCH" mock --listen 127.0.0.1:0 >"$WORK/mock.out" 2>"$WORK/mock.err" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK_PORT=$(wait_port "$WORK/mock.out" "mock listening on" "$MOCK_PID") || { log "mock did not start"; exit 1; }

# name, extra top-level YAML; every variant shares providers and models.
start_gateway() {
  local name=$1 extra=$2
  cat >"$WORK/$name.yaml" <<EOF
listen: 127.0.0.1:0
shards: 1
store: { dir: $WORK/$name-data }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1" }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
$extra
EOF
  "${SERVER_PIN[@]}" "$GATEWAY_BIN" serve --config "$WORK/$name.yaml" --no-pin \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  local port
  port=$(wait_port "$WORK/$name.out" "shardgate listening on" "$pid") \
    || { log "$name did not start"; cat "$WORK/$name.err" >&2; exit 1; }
  PORT=$port PID=$pid
}

key_for() {
  create_key "$GATEWAY_BIN" "$WORK/$1.yaml"
}

# Called in this shell (not in $(...)) so that cleanup knows every pid.
start_gateway off "auth: none"
OFF_PORT=$PORT OFF_PID=$PID
start_gateway policy "$(bench_policy)"
POL_PORT=$PORT POL_PID=$PID
start_gateway tokens "$(bench_policy ", tokens_per_minute: 1000000000000")"
TOK_PORT=$PORT TOK_PID=$PID
start_gateway audit "$(bench_policy)
      audit: { log_prompts: metadata_only }
audit: { fsync: 100ms }"
AUD_PORT=$PORT AUD_PID=$PID
KEY_POLICY=$(key_for policy)
KEY_TOKENS=$(key_for tokens)
KEY_AUDIT=$(key_for audit)

PATH_=/v1/chat/completions
POLICY_TARGET=(--target "key+policy=http://127.0.0.1:$POL_PORT$PATH_,pid=$POL_PID,api-key=$KEY_POLICY")
AUDIT_TARGET=(--target "key+policy+audit=http://127.0.0.1:$AUD_PORT$PATH_,pid=$AUD_PID,api-key=$KEY_AUDIT")
if ((AUDIT_ONLY)); then
  TARGETS=("${POLICY_TARGET[@]}" "${AUDIT_TARGET[@]}")
else
  TARGETS=(
    --target "auth-off=http://127.0.0.1:$OFF_PORT$PATH_,pid=$OFF_PID"
    "${POLICY_TARGET[@]}"
    --target "key+policy+tokens=http://127.0.0.1:$TOK_PORT$PATH_,pid=$TOK_PID,api-key=$KEY_TOKENS"
    "${AUDIT_TARGET[@]}"
  )
fi
mkdir -p "$RESULTS"
OUT=$RESULTS/compare-auth-$(date +%Y%m%d-%H%M%S)
CMD=("${LOAD_PIN[@]}" "$BENCH" compare "${TARGETS[@]}" --rounds "$ROUNDS" --duration "$DURATION"
  --warmup "$WARMUP" --connections "$CONNECTIONS" --shards "$LOAD_SHARDS" --out "$OUT.json" "${EXTRA[@]}")
# The command line carries gateway keys: shown and saved with them redacted.
SHOWN=$(sed -E 's/api-key=[^ ,]+/api-key=[REDACTED]/g' <<<"${CMD[*]}")
log "running: $SHOWN"
"${CMD[@]}" | tee "$OUT.txt"
echo "command: $SHOWN" >>"$OUT.txt"
log "results: $OUT.txt $OUT.json"
