#!/usr/bin/env bash
# Routing and resilience, each figure beside its own baseline in one run,
# the gateway confined with taskset to its own CPU(s):
#
#   failover        c=1 latency of a route whose first target refuses the
#                   connection (a closed port), against the same mock target
#                   alone: what a refused connection adds.
#   lowest_latency  streams over two targets with a fixed time to first
#                   token of 50 ms and 300 ms, against the 50 ms one alone:
#                   mean TTFT.
#   hedging         a mock fleet whose TTFT is exponential (--ttft
#                   exp:200ms), open loop at --rate, streams: one target
#                   against a route hedged after its p95, and after a fixed
#                   --hedge-after: TTFT p99, and upstream attempts per
#                   request (from /metrics).
#
#   bench/compare-routing.sh [--duration 20s] [--rate 40] [--hedge-after 300ms]
#       [--lowest-connections 8] [--shards 1] [--no-build]
set -euo pipefail

DURATION=20s
RATE=40
HEDGE_AFTER=300ms
LOWEST_CONNECTIONS=8
WORKERS=1
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --hedge-after) HEDGE_AFTER=$2; shift 2 ;;
    --lowest-connections) LOWEST_CONNECTIONS=$2; shift 2 ;;
    --shards) WORKERS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-routing
KEY=bench-key
SKIP_NGINX=1
require_tools || exit 1
cpu_layout "$WORKERS" || {
  log "$WORKERS shard(s) need $((WORKERS + 1)) CPUs; this host has $(nproc)"
  exit 1
}
raise_nofile 65536
cd "$ROOT"
build_release


# Two mocks: a plain one (failover, lowest_latency), and a fleet with an
# exponential time to first token (hedging).
start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
PLAIN=$MOCK_PORT
start_mock "$MOCK_CPUS" "$MOCK_SHARDS" --ttft exp:200ms
TAILED=$MOCK_PORT
DEAD=$(free_port)
API=$(free_port)
ADMIN=$(free_port)
TOKEN=bench-admin-token-0123456789

cat >"$WORK/shardgate.yaml" <<YAML
listeners:
  - { address: 127.0.0.1:$API }
  - { address: 127.0.0.1:$ADMIN, role: admin }
admin: { token: $TOKEN }
shards: $WORKERS
auth: none
store: { dir: "$WORK/shardgate-data" }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$PLAIN/v1", api_key: $KEY }
  dead: { kind: openai, base_url: "http://127.0.0.1:$DEAD/v1", api_key: $KEY }
  fleet: { kind: openai, base_url: "http://127.0.0.1:$TAILED/v1", api_key: $KEY }
models:
  direct: { targets: [ { provider: up, model: mock-1 } ] }
  failover: { targets: [ { provider: dead, model: mock-1 }, { provider: up, model: mock-1 } ] }
  fast-alone: { targets: [ { provider: up, model: mock-ttft-50ms } ] }
  lowest:
    strategy: lowest_latency
    targets: [ { provider: up, model: mock-ttft-300ms }, { provider: up, model: mock-ttft-50ms } ]
  single: { targets: [ { provider: fleet, model: fleet-a } ] }
  hedged-p95:
    targets: [ { provider: fleet, model: fleet-b }, { provider: fleet, model: fleet-c } ]
    hedge: { after: p95, initial: 500ms }
  hedged-fixed:
    targets: [ { provider: fleet, model: fleet-d }, { provider: fleet, model: fleet-e } ]
    hedge: { after: $HEDGE_AFTER }
YAML
taskset -c "$PROXY_CPUS" "$GATEWAY_BIN" serve --config "$WORK/shardgate.yaml" \
  >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$WORK/gateway.out" "shardgate listening on" "$GW_PID" >/dev/null \
  || { log "gateway did not start"; tail -n 20 "$WORK/gateway.err" >&2; exit 1; }
log "gateway on 127.0.0.1:$API (cpus $PROXY_CPUS); mocks on $MOCK_CPUS; load on $LOAD_CPUS"
URL=http://127.0.0.1:$API/v1/chat/completions

run() { # MODEL ARGS...: one bench run's JSON report
  local model=$1
  shift
  taskset -c "$LOAD_CPUS" "$BENCH" run --url "$URL" --model "$model" --shards "$LOAD_SHARDS" \
    --duration "$DURATION" --warmup 1s --timeout 30s --json "$@"
}

attempts() { # MODEL-PREFIX: {"upstream_attempts": all, "answered": those answered}, fleet models named so
  curl -s -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/metrics" |
    awk -v m="$1" '/^shardgate_upstream_attempts_total/ && $0 ~ "model=\"" m {
        s += $NF; if ($0 ~ /outcome="answered"/) a += $NF }
      END { printf "{\"upstream_attempts\": %d, \"answered\": %d}", s, a }'
}

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-routing-$(date +%Y%m%d-%H%M%S)
: >"$OUT.jsonl"
record() { # NAME JSON [EXTRA_JSON]
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r.update(json.loads(sys.argv[3])); print(json.dumps({"case": sys.argv[1], "report": r}))' \
    "$1" "$2" "${3:-{\}}" >>"$OUT.jsonl"
}

log "failover: c=1, $DURATION each"
record direct "$(run direct --connections 1)"
record failover "$(run failover --connections 1)"

log "lowest_latency: $LOWEST_CONNECTIONS streams at a time, $DURATION each"
record fast-alone "$(run fast-alone --connections "$LOWEST_CONNECTIONS" --stream --max-tokens 4)"
record lowest "$(run lowest --connections "$LOWEST_CONNECTIONS" --stream --max-tokens 4)"

for model in single hedged-p95 hedged-fixed; do
  log "hedging: $model, open loop at $RATE/s, $DURATION"
  prefix=fleet-
  case $model in
    single) prefix=fleet-a ;; hedged-p95) prefix='fleet-[bc]' ;; hedged-fixed) prefix='fleet-[de]' ;;
  esac
  json=$(run "$model" --connections 256 --stream --max-tokens 4 --rate "$RATE")
  record "$model" "$json" "$(attempts "$prefix")"
done

python3 - "$OUT.jsonl" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[r["case"]] = r["report"]
def p(case, key, q):
    return rows[case][key][q] / 1000
print("\n## failover (c=1)")
d, f = p("direct", "latency_us", "p50"), p("failover", "latency_us", "p50")
print(f"direct p50 {d:.3f} ms; failover from a refused connection p50 {f:.3f} ms: +{(f - d) * 1000:.0f} µs")
print(f"\n## lowest_latency (TTFT 50 ms and 300 ms; {rows['lowest']['connections']} streams at a time)")
a, l = rows["fast-alone"]["ttft_us"]["mean"] / 1000, rows["lowest"]["ttft_us"]["mean"] / 1000
print(f"fast target alone: mean TTFT {a:.1f} ms; lowest_latency over both: {l:.1f} ms ({(l / a - 1) * 100:+.1f}%)")
print("\n## hedging (TTFT exp:200ms, open loop)")
base = rows["single"]
for case in ("single", "hedged-p95", "hedged-fixed"):
    r = rows[case]
    n = r["requests"]
    # Every request has one answered attempt: the rest are hedges (and
    # failures), warmup included on both sides.
    extra = r["upstream_attempts"] / max(r["answered"], 1) - 1
    drop = 1 - r["ttft_us"]["p99"] / base["ttft_us"]["p99"]
    print(f"{case:<13} {n:>6} requests  ttft p50 {r['ttft_us']['p50'] / 1000:7.1f} ms  p99 {r['ttft_us']['p99'] / 1000:7.1f} ms"
          f"  ({drop * 100:+5.1f}% vs single)  extra upstream requests {extra * 100:5.1f}%")
PY
log "results: $OUT.jsonl"
