#!/usr/bin/env bash
# What the cluster costs, in one run, each gateway confined with taskset:
#
#   cluster on/off  one node under a limiting policy (requests per minute and
#                   monthly spend, never reached) with and without
#                   `cluster:` (a local redis-server), interleaved rounds at
#                   --connections: throughput and CPU per request; and the
#                   store calls per second that node made at that load
#                   (Redis' count of script calls, the node being its only
#                   client).
#   nodes 1, 2, 3   the same policy on 1, 2 and 3 cluster nodes (one shard
#                   each, all on the proxy CPUs), loaded at once with the
#                   connections split between them: aggregate throughput
#                   and CPU per request (all nodes' CPU over all requests).
#
#   bench/compare-cluster.sh [--rounds 3] [--duration 5s] [--connections 64]
#       [--no-build]
set -euo pipefail

ROUNDS=3
DURATION=5s
CONNECTIONS=64
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-cluster
KEY=bench-upstream-key
command -v redis-server >/dev/null || { log "redis-server is not installed"; exit 1; }
cpu_layout 1 || { log "needs 2 CPUs"; exit 1; }
raise_nofile 65536
cd "$ROOT"
build_release


start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
REDIS_PORT=$(free_port)
taskset -c "$MOCK_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
  --appendonly no --logfile "$WORK/redis.log" &
PIDS+=("$!")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# Script calls (what a node sends: grants, returns, usage, heartbeats), not
# the commands each script runs inside Redis.
redis_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats \
    | awk -F'[:=,]' '/^cmdstat_evalsha:|^cmdstat_eval:/ { n += $3 } END { print n+0 }'
}

POLICY='policies:
  - ai_runtime_policy:
      actor_scope: { team: bench }
      budgets: { requests_per_minute: 1000000000, monthly_spend_usd: 1000000000 }'
CLUSTER="cluster: { redis: { url: \"redis://127.0.0.1:$REDIS_PORT/0\" } }"

# name, extra YAML: a one-shard gateway on the proxy CPU.
node() {
  local name=$1 extra=$2
  cat >"$WORK/$name.yaml" <<EOF
listen: 127.0.0.1:0
shards: 1
store: { dir: $WORK/$name-data }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
$POLICY
$extra
EOF
  taskset -c "$PROXY_CPUS" "$GATEWAY_BIN" serve --config "$WORK/$name.yaml" --no-pin \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  PORT=$(wait_port "$WORK/$name.out" "shardgate listening on" "$pid") \
    || { log "$name did not start"; cat "$WORK/$name.err" >&2; exit 1; }
  PID=$pid
}

key_for() {
  create_key "$GATEWAY_BIN" "$WORK/$1.yaml"
}

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-cluster-$(date +%Y%m%d-%H%M%S)
PATH_=/v1/chat/completions

# ---- cluster on / off ---------------------------------------------------
node single ""
SINGLE_PORT=$PORT SINGLE_PID=$PID
KEY_SINGLE=$(key_for single)
node c1 "$CLUSTER"
C1_PORT=$PORT C1_PID=$PID
KEY_C1=$(key_for c1)
sleep 1
calls_before=$(redis_calls)
started=$(date +%s.%N)
CMD=(taskset -c "$LOAD_CPUS" "$BENCH" compare
  --target "single=http://127.0.0.1:$SINGLE_PORT$PATH_,pid=$SINGLE_PID,api-key=$KEY_SINGLE"
  --target "cluster=http://127.0.0.1:$C1_PORT$PATH_,pid=$C1_PID,api-key=$KEY_C1"
  --rounds "$ROUNDS" --duration "$DURATION" --connections "$CONNECTIONS" --shards "$LOAD_SHARDS"
  --out "$OUT.json")
log "running: $(sed -E 's/api-key=[^ ,]+/api-key=[REDACTED]/g' <<<"${CMD[*]}")"
"${CMD[@]}" | tee "$OUT.txt"
elapsed=$(python3 -c "import time; print(time.time() - $started)")
calls=$(($(redis_calls) - calls_before))
# Half of the run loads the cluster node (interleaved with the single one).
echo "store calls: $calls in ${elapsed%.*} s, ~$(python3 -c "print(round($calls / ($elapsed / 2)))") per second of load on the cluster node (Redis INFO commandstats: script calls)" | tee -a "$OUT.txt"
kill "$SINGLE_PID" "$C1_PID" 2>/dev/null || true

# ---- nodes 1, 2, 3 --------------------------------------------------------
node n1 "$CLUSTER"; P1=$PORT; PID1=$PID
node n2 "$CLUSTER"; P2=$PORT; PID2=$PID
node n3 "$CLUSTER"; P3=$PORT; PID3=$PID
NODE_KEY=$(key_for n1)
sleep 1.5 # the key reaches n2 and n3 through the store
PORTS=("$P1" "$P2" "$P3") NPIDS=("$PID1" "$PID2" "$PID3")
echo "" | tee -a "$OUT.txt"
echo "nodes  req/s  cpu_us/req (all nodes)" | tee -a "$OUT.txt"
for n in 1 2 3; do
  per=$((CONNECTIONS / n))
  runs=()
  for ((i = 0; i < n; i++)); do
    taskset -c "$LOAD_CPUS" "$BENCH" run --url "http://127.0.0.1:${PORTS[i]}$PATH_" \
      --connections "$per" --duration "$DURATION" --api-key "$NODE_KEY" \
      --watch-pid "${NPIDS[i]}" --json >"$WORK/run-$n-$i.json" 2>"$WORK/run-$n-$i.err" &
    runs+=("$!")
  done
  for r in "${runs[@]}"; do wait "$r"; done
  python3 - "$n" "$WORK" <<'EOF' | tee -a "$OUT.txt"
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
rps = cpu = reqs = 0.0
for i in range(n):
    r = json.load(open(f"{work}/run-{n}-{i}.json"))
    rps += r["requests_per_second"]
    reqs += r["requests"]
    cpu += r["watched_cpu_us"] or 0
print(f"{n:>5}  {rps:>7.0f}  {cpu / max(reqs, 1):.1f}")
EOF
done
echo "command: bench/compare-cluster.sh --rounds $ROUNDS --duration $DURATION --connections $CONNECTIONS" >>"$OUT.txt"
log "results: $OUT.txt $OUT.json"
