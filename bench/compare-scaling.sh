#!/usr/bin/env bash
# How Shardgate and nginx scale with cores: 1, 2, 4 and 8 gateway shards
# against as many nginx worker processes, each proxy pinned to the same N
# CPUs in turn, closed loop at --per-shard connections per shard, rounds
# interleaving the proxies. A count the host can't hold (N CPUs for the
# proxy plus at least one for the load generator and mock) is skipped.
# Per count and proxy: req/s, p50/p99 latency, CPU us per request, busy
# cores, and the gateway's req/s over nginx's. Prints the table and writes
# text + JSON lines under bench/results/ (gitignored).
#
#   bench/compare-scaling.sh [--counts 1,2,4,8] [--per-shard 64]
#       [--rounds 2] [--duration 5s] [--warmup 1s] [--max-tokens 16]
#       [--stream] [--no-build] [--skip-nginx]
#
#   --counts LIST    shard/worker counts to try
#   --per-shard N    closed-loop connections per shard (N x count in all)
#
# Pinning, per count N: the proxy under test on CPUs 1..N (taskset; the
# gateway pinning its shards inside it), the mock and the load generator on CPU 0 and the
# CPUs beyond N, each on its own when there are two or more; the mock and
# both proxies restart for each count. On a host with few spare CPUs the
# load generator and the mock, not the proxy, may set the ceiling: the
# busy-cores column says how much of its N CPUs the proxy used.
# CPU per request: utime+stime of the gateway process or of every nginx
# worker, read from /proc/PID/stat at the edges of the measurement window
# (`run --watch-pid`), over the requests completed in it.
set -euo pipefail

COUNTS=1,2,4,8
PER_SHARD=64
ROUNDS=2
DURATION=5s
WARMUP=1s
MAX_TOKENS=16
STREAM=()
BUILD=1
SKIP_NGINX=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --counts) COUNTS=$2; shift 2 ;;
    --per-shard) PER_SHARD=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    --stream) STREAM=(--stream); shift ;;
    --no-build) BUILD=0; shift ;;
    --skip-nginx) SKIP_NGINX=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-scaling
KEY=bench-key

require_tools || exit 1

cd "$ROOT"
build_release

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-scaling-$(date +%Y%m%d-%H%M%S)
: >"$OUT.jsonl"
LAYOUTS=()
SKIPPED=()

for n in ${COUNTS//,/ }; do
  if ! cpu_layout "$n"; then
    log "skipping $n shard(s): needs $((n + 1)) CPUs, this host has $(nproc)"
    SKIPPED+=("$n")
    continue
  fi
  conns=$((PER_SHARD * n))
  raise_nofile $((4 * conns + 4096))
  start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
  start_gateway "$PROXY_CPUS" "$n" 1024
  NAMES=(gateway)
  URLS=("http://127.0.0.1:$GW_PORT/v1/chat/completions")
  MODELS=(demo)
  WATCH=("$GW_PID")
  if ((!SKIP_NGINX)); then
    start_nginx "$PROXY_CPUS" "$n" "$conns" 1024
    NAMES+=(nginx)
    URLS+=("http://127.0.0.1:$NGINX_PORT/v1/chat/completions")
    MODELS+=(mock-1)
    WATCH+=("$NGINX_WORKERS")
  fi
  LAYOUTS+=("$n: proxy cpus $PROXY_CPUS, mock cpus $MOCK_CPUS, load cpus $LOAD_CPUS ($LOAD_SHARDS shard(s)), $conns connections")
  for ((round = 1; round <= ROUNDS; round++)); do
    for i in "${!NAMES[@]}"; do
      json=$(taskset -c "$LOAD_CPUS" "$BENCH" run --url "${URLS[i]}" --model "${MODELS[i]}" \
        --watch-pid "${WATCH[i]}" --connections "$conns" --shards "$LOAD_SHARDS" \
        --duration "$DURATION" --warmup "$WARMUP" --max-tokens "$MAX_TOKENS" "${STREAM[@]}" --json)
      python3 - "$n" "$round" "${NAMES[i]}" "$json" >>"$OUT.jsonl" <<'PY'
import json, sys
n, rnd, name, report = sys.argv[1:]
r = json.loads(report)
print(json.dumps({"count": int(n), "round": int(rnd), "proxy": name, "report": r}))
cpu = r.get("watched_cpu_us_per_request")
print(f"{n} shard(s) round {rnd} {name:<8} {r['requests_per_second']:>10.1f} req/s  p50 "
      f"{r['latency_us']['p50'] / 1000:.3f}ms  p99 {r['latency_us']['p99'] / 1000:.3f}ms  cpu "
      f"{cpu if cpu is None else round(cpu, 1)} us/req  errors {r['errors_total']}", file=sys.stderr)
PY
    done
  done
  stop_servers
done

if [[ ! -s $OUT.jsonl ]]; then
  log "no count fits this host ($(nproc) CPUs)"
  exit 1
fi
python3 - "$OUT.jsonl" <<'PY' | tee "$OUT.txt"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
first = runs[0]["report"]
m = first["machine"]
print(f"machine: nproc={m['nproc']} cpu=\"{m['cpu_model']}\" profile={m['profile']} git={m['git_rev']}")
print(f"closed loop; warmup {first['warmup_s']}s + {first['duration_s']}s per run, "
      f"{max(r['round'] for r in runs)} interleaved round(s), stream={first['stream']}")
print("req/s and latency: median over rounds; cpu: all rounds' CPU over all rounds' requests")
print()
print(f"{'shards':>6} {'proxy':<8} {'conns':>6} {'req/s':>10} {'gw/nginx':>8} {'p50 ms':>8} "
      f"{'p99 ms':>8} {'cpu us/req':>10} {'cores':>6} {'errors':>6}")
for n in dict.fromkeys(r["count"] for r in runs):
    at = [r for r in runs if r["count"] == n]
    rps = {}
    rows = []
    for proxy in dict.fromkeys(r["proxy"] for r in at):
        rs = [r["report"] for r in at if r["proxy"] == proxy]
        ok = sum(r["requests"] for r in rs)
        cpus = [r["watched_cpu_us"] for r in rs]
        known = None not in cpus
        secs = sum(r["duration_s"] for r in rs)
        rps[proxy] = statistics.median(r["requests_per_second"] for r in rs)
        rows.append((proxy, rs, ok, sum(cpus) if known else None, secs))
    for proxy, rs, ok, cpu, secs in rows:
        ratio = rps[proxy] / rps["nginx"] if "nginx" in rps and rps["nginx"] else None
        print(f"{n:>6} {proxy:<8} {rs[0]['connections']:>6} {rps[proxy]:>10.1f} "
              f"{'-' if ratio is None else f'{ratio:.3f}':>8} "
              f"{statistics.median(r['latency_us']['p50'] for r in rs) / 1000:>8.3f} "
              f"{statistics.median(r['latency_us']['p99'] for r in rs) / 1000:>8.3f} "
              f"{'-' if cpu is None or not ok else f'{cpu / ok:.1f}':>10} "
              f"{'-' if cpu is None else f'{cpu / 1e6 / secs:.2f}':>6} "
              f"{sum(r['errors_total'] for r in rs):>6}")
PY
{
  echo
  for l in "${LAYOUTS[@]}"; do echo "layout $l"; done
  if ((${#SKIPPED[@]})); then echo "skipped (not enough CPUs on this host): ${SKIPPED[*]}"; fi
} | tee -a "$OUT.txt"
log "results: $OUT.txt $OUT.jsonl"
