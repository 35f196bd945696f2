#!/usr/bin/env bash
# MCP tools/call through the gateway, side by side with nginx proxying the
# same mock and with the mock called directly, in one run: the mock's MCP
# endpoint (both eras; here 2026-07-28) answers an `echo` tool, so no Python
# server bounds the figures. One connection (the added latency), then
# --connections (throughput and CPU per request of the proxy).
#
#   bench/compare-mcp.sh [--rounds 3] [--duration 5s] [--warmup 1s]
#       [--connections 64] [--shards 1] [--no-build] [--skip-nginx]
#
# The proxy is confined with taskset to its own CPU(s) (cpu_layout in
# lib.sh); the mock and the load generator get the rest.
set -euo pipefail

ROUNDS=3
DURATION=5s
WARMUP=1s
CONNECTIONS=64
WORKERS=1
BUILD=1
SKIP_NGINX=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --shards) WORKERS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --skip-nginx) SKIP_NGINX=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-mcp
KEY=bench-key

require_tools || exit 1
cpu_layout "$WORKERS" || {
  log "$WORKERS shard(s) need $((WORKERS + 1)) CPUs; this host has $(nproc)"
  exit 1
}
raise_nofile $((4 * CONNECTIONS + 4096))
cd "$ROOT"
build_release

start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
GW_EXTRA_YAML="mcp_servers: { mock: { url: \"http://127.0.0.1:$MOCK_PORT/mcp\", bearer_token: $KEY } }" \
  start_gateway "$PROXY_CPUS" "$WORKERS" 1024
NAMES=(direct gateway) URLS=("http://127.0.0.1:$MOCK_PORT/mcp" "http://127.0.0.1:$GW_PORT/mcp")
TOOLS=(echo mock.echo) WATCH=("$MOCK_PID" "$GW_PID")
if ((!SKIP_NGINX)); then
  start_nginx "$PROXY_CPUS" "$WORKERS" "$CONNECTIONS" 1024
  NAMES+=(nginx) URLS+=("http://127.0.0.1:$NGINX_PORT/mcp") TOOLS+=(echo) WATCH+=("$NGINX_WORKERS")
fi
log "proxy on cpus $PROXY_CPUS; mock on $MOCK_CPUS; load generator on $LOAD_CPUS"

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-mcp-$(date +%Y%m%d-%H%M%S)
: >"$OUT.jsonl"
for conns in 1 "$CONNECTIONS"; do
  for ((round = 1; round <= ROUNDS; round++)); do
    for i in "${!NAMES[@]}"; do
      json=$(taskset -c "$LOAD_CPUS" "$BENCH" run --api mcp --url "${URLS[i]}" --model "${TOOLS[i]}" \
        --api-key "$KEY" --watch-pid "${WATCH[i]}" --shards "$LOAD_SHARDS" --connections "$conns" \
        --duration "$DURATION" --warmup "$WARMUP" --json)
      python3 - "$conns" "$round" "${NAMES[i]}" "$json" >>"$OUT.jsonl" <<'PY'
import json, sys
conns, rnd, name, report = sys.argv[1:]
r = json.loads(report)
print(json.dumps({"connections": int(conns), "round": int(rnd), "target": name, "report": r}))
cpu = r.get("watched_cpu_us_per_request")
print(f"c={conns:<3} round {rnd} {name:<8} {r['requests_per_second']:>9.1f} req/s"
      f"  p50 {r['latency_us']['p50']:.0f}us  p99 {r['latency_us']['p99']:.0f}us"
      f"  cpu {cpu if cpu is None else round(cpu, 1)} us/req  errors {r['errors_total']}", file=sys.stderr)
PY
    done
  done
done
python3 - "$OUT.jsonl" <<'PY' | tee "$OUT.txt"
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["connections"], r["target"])].append(r["report"])
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("connections target      req/s   p50 us  cpu us/req (the target's own process)")
for (c, t), rs in sorted(by.items()):
    cpu = [x["watched_cpu_us_per_request"] for x in rs if x.get("watched_cpu_us_per_request")]
    print(f"{c:>11} {t:<8} {med([x['requests_per_second'] for x in rs]):>9.0f} "
          f"{med([x['latency_us']['p50'] for x in rs]):>8.0f}  {med(cpu):>9.1f}")
for c in sorted({c for c, _ in by}):
    d = med([x["latency_us"]["p50"] for x in by[(c, "direct")]])
    g = med([x["latency_us"]["p50"] for x in by[(c, "gateway")]])
    rd = med([x["requests_per_second"] for x in by[(c, "direct")]])
    rg = med([x["requests_per_second"] for x in by[(c, "gateway")]])
    print(f"c={c}: gateway adds {g - d:.0f} us at p50; throughput {rg / rd:.2f}x direct")
PY
log "results: $OUT.jsonl, $OUT.txt"
