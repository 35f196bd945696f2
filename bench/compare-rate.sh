#!/usr/bin/env bash
# Shardgate and nginx at the same offered load: first each one's saturation
# (closed loop), then open loop (`shardgate-bench run --rate R`) at 25%, 50%
# and 90% of the LOWER of the two saturations, so both get the same offered
# rate. Per rate and proxy: achieved rate, p50/p99 latency (from each
# request's intended send time), CPU us per request. Rounds interleave the
# proxies, each first in every other round. Prints the table and writes
# text + JSON lines under bench/results/ (gitignored).
#
#   bench/compare-rate.sh [--workers 1] [--rounds 2] [--duration 5s]
#       [--warmup 1s] [--connections 64] [--open-connections 512]
#       [--percents 25,50,90] [--max-tokens 16] [--stream] [--no-build]
#       [--skip-nginx] [--control]
#
#   --workers N           gateway shards = nginx worker processes
#   --connections N       closed-loop concurrency for the saturation runs
#   --open-connections N  open loop: most requests in flight at once
#   --percents LIST       offered rates, in % of the lower saturation
#   --control             a second, identical nginx (nginx-b) in every round:
#                         its differences from nginx are the noise floor of
#                         the gateway's (the same proxy measured against
#                         itself)
#
# Pinning, as an operator would: the proxy under test on CPUs 1..N (taskset;
# the gateway pinning its shards inside it), the mock and the load generator on CPU 0 and
# any CPUs beyond the proxy's (each on its own when there are two or more).
# On a 2-CPU host: proxy on CPU 1, load generator and mock on CPU 0, so a
# saturation figure may be the load generator's or the mock's limit: the
# table shows the proxy's busy cores and the load generator's beside it,
# and "behind" where the open loop could not send at the offered rate
# (requests due but unsent at the end: the achieved rate and latency are
# then the load generator's, not the proxy's). "load cpus" is how busy the
# load generator's CPUs were, whatever ran there (on 2 CPUs, the mock too):
# near 100%, requests queue for those CPUs, and the latency measures that
# queue as much as the proxy. A last block gives each round's latency
# difference between the two proxies (they ran back to back).
# CPU per request: utime+stime of the gateway process or of every nginx
# worker, read from /proc/PID/stat at the edges of the measurement window
# (`run --watch-pid`), over the requests completed in it.
set -euo pipefail

WORKERS=1
ROUNDS=2
DURATION=5s
WARMUP=1s
CONNECTIONS=64
OPEN_CONNECTIONS=512
PERCENTS=25,50,90
MAX_TOKENS=16
STREAM=()
BUILD=1
SKIP_NGINX=0
CONTROL=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --open-connections) OPEN_CONNECTIONS=$2; shift 2 ;;
    --percents) PERCENTS=$2; shift 2 ;;
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    --stream) STREAM=(--stream); shift ;;
    --no-build) BUILD=0; shift ;;
    --skip-nginx) SKIP_NGINX=1; shift ;;
    --control) CONTROL=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-rate
KEY=bench-key

require_tools || exit 1
cpu_layout "$WORKERS" || {
  log "$WORKERS worker(s) need $((WORKERS + 1)) CPUs (one for the load generator and mock); this host has $(nproc)"
  exit 1
}
raise_nofile $((4 * OPEN_CONNECTIONS + 4096))

cd "$ROOT"
build_release

start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
start_gateway "$PROXY_CPUS" "$WORKERS" 1024
PATH_=/v1/chat/completions
NAMES=() URLS=() MODELS=() WATCH=()
# add_proxy NAME PORT MODEL PIDS: one more proxy for every round.
add_proxy() {
  NAMES+=("$1")
  URLS+=("http://127.0.0.1:$2$PATH_")
  MODELS+=("$3")
  WATCH+=("$4")
}
add_proxy gateway "$GW_PORT" demo "$GW_PID"
if ((!SKIP_NGINX)); then
  start_nginx "$PROXY_CPUS" "$WORKERS" "$OPEN_CONNECTIONS" 1024
  add_proxy nginx "$NGINX_PORT" mock-1 "$NGINX_WORKERS"
  if ((CONTROL)); then
    NGINX_DIR=$WORK/nginx-b start_nginx "$PROXY_CPUS" "$WORKERS" "$OPEN_CONNECTIONS" 1024
    add_proxy nginx-b "$NGINX_PORT" mock-1 "$NGINX_WORKERS"
  fi
elif ((CONTROL)); then
  log "--control runs a second nginx beside the first: not with --skip-nginx"
  exit 2
fi
log "proxy on cpus $PROXY_CPUS; mock on $MOCK_CPUS; load generator on $LOAD_CPUS ($LOAD_SHARDS shard(s))"

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-rate-$(date +%Y%m%d-%H%M%S)
: >"$OUT.jsonl"

# measure PHASE PERCENT ROUND INDEX [RUN ARGS...]: one run against proxy
# INDEX, its JSON report appended to $OUT.jsonl with the phase's labels.
measure() {
  local phase=$1 percent=$2 round=$3 i=$4 json
  shift 4
  json=$(taskset -c "$LOAD_CPUS" "$BENCH" run --url "${URLS[i]}" --model "${MODELS[i]}" \
    --watch-pid "${WATCH[i]}" --shards "$LOAD_SHARDS" --duration "$DURATION" \
    --warmup "$WARMUP" --max-tokens "$MAX_TOKENS" "${STREAM[@]}" --json "$@")
  python3 - "$phase" "$percent" "$round" "${NAMES[i]}" "$json" >>"$OUT.jsonl" <<'PY'
import json, sys
phase, percent, rnd, name, report = sys.argv[1:]
r = json.loads(report)
print(json.dumps({"phase": phase, "percent": float(percent), "round": int(rnd),
                  "proxy": name, "report": r}))
p50, p99 = r["latency_us"]["p50"] / 1000, r["latency_us"]["p99"] / 1000
cpu = r.get("watched_cpu_us_per_request")
print(f"{phase} {percent}% round {rnd} {name:<8} {r['requests_per_second']:>10.1f} req/s"
      f"  p50 {p50:.3f}ms  p99 {p99:.3f}ms  cpu {cpu if cpu is None else round(cpu, 1)} us/req"
      f"  errors {r['errors_total']}", file=sys.stderr)
PY
}

# order ROUND: the proxies' indices, reversed in even rounds, so neither
# always runs first (right after the other's load) in its round.
order() {
  local i out=()
  for i in "${!NAMES[@]}"; do
    if (($1 % 2)); then out+=("$i"); else out=("$i" "${out[@]}"); fi
  done
  echo "${out[@]}"
}

# 1. Saturation, closed loop, interleaved.
for ((round = 1; round <= ROUNDS; round++)); do
  for i in $(order "$round"); do
    measure saturation 100 "$round" "$i" --connections "$CONNECTIONS"
  done
done
SAT=$(python3 - "$OUT.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["proxy"], []).append(r["report"]["requests_per_second"])
print(min(statistics.median(v) for v in by.values()))
PY
)
log "lower saturation: $SAT req/s"

# 2. Open loop at each share of it, interleaved.
for pct in ${PERCENTS//,/ }; do
  RATE=$(python3 -c "print(round($SAT * $pct / 100, 1))")
  for ((round = 1; round <= ROUNDS; round++)); do
    for i in $(order "$round"); do
      measure open "$pct" "$round" "$i" --rate "$RATE" --connections "$OPEN_CONNECTIONS"
    done
  done
done

python3 - "$OUT.jsonl" <<'PY' | tee "$OUT.txt"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
first = runs[0]["report"]
m = first["machine"]
print(f"machine: nproc={m['nproc']} cpu=\"{m['cpu_model']}\" profile={m['profile']} git={m['git_rev']}")
print(f"per point: {len([r for r in runs if r['phase'] == 'saturation']) // len({r['proxy'] for r in runs})} "
      f"interleaved round(s), warmup {first['warmup_s']}s + {first['duration_s']}s; "
      f"stream={first['stream']}; load generator {first['shards']} shard(s)")
print("latency: median over rounds of each round's p50/p99; cpu: all rounds' CPU over all rounds' requests")
print()
print(f"{'offered':>16} {'proxy':<8} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
      f"{'cpu us/req':>10} {'proxy cores':>11} {'load cores':>10} {'load cpus':>9} {'errors':>7}")
points = []
for r in runs:
    key = (r["phase"], r["percent"])
    if key not in points:
        points.append(key)
for phase, pct in points:
    sel = [r for r in runs if (r["phase"], r["percent"]) == (phase, pct)]
    for proxy in dict.fromkeys(r["proxy"] for r in sel):
        rs = [r["report"] for r in sel if r["proxy"] == proxy]
        ok = sum(r["requests"] for r in rs)
        cpus = [r["watched_cpu_us"] for r in rs]
        secs = sum(r["duration_s"] for r in rs)
        cpu = sum(cpus) / ok if ok and None not in cpus else None
        cores = sum(cpus) / 1e6 / secs if None not in cpus else None
        label = "saturation" if phase == "saturation" else f"{pct:g}% {rs[0]['rate']:.0f}/s"
        print(f"{label:>16} {proxy:<8} {statistics.median(r['requests_per_second'] for r in rs):>11.1f} "
              f"{statistics.median(r['latency_us']['p50'] for r in rs) / 1000:>8.3f} "
              f"{statistics.median(r['latency_us']['p99'] for r in rs) / 1000:>8.3f} "
              f"{'-' if cpu is None else f'{cpu:.1f}':>10} {'-' if cores is None else f'{cores:.2f}':>11} "
              f"{statistics.median(r['loadgen_cpu_cores'] or 0 for r in rs):>10.2f} "
              f"{statistics.median(r.get('loadgen_cpus_busy') or 0 for r in rs) * 100:>8.1f}% "
              f"{sum(r['errors_total'] for r in rs):>7}"
              + ("  behind" if any(r.get("unsent_at_end") for r in rs) else ""))
# Paired rounds: each round ran the proxies back to back, so round-to-round
# drift (the host, the helpers' CPUs) cancels in the differences.
pairs = [(phase, pct) for phase, pct in points if phase == "open"]
proxies = {r["proxy"] for r in runs}
for a, b, note in (("gateway", "nginx", ""), ("nginx-b", "nginx", ", the control: nginx against itself")):
    if not pairs or not {a, b} <= proxies:
        continue
    print()
    print(f"open loop, round by round ({a} - {b}, us{note}): p50, p99")
    for phase, pct in pairs:
        by = {}
        for r in runs:
            if (r["phase"], r["percent"]) == (phase, pct):
                by.setdefault(r["round"], {})[r["proxy"]] = r["report"]["latency_us"]
        diffs = [(v[a]["p50"] - v[b]["p50"], v[a]["p99"] - v[b]["p99"])
                 for _, v in sorted(by.items()) if {a, b} <= v.keys()]
        if not diffs:
            continue
        p50s = [d[0] for d in diffs]
        p99s = [d[1] for d in diffs]
        print(f"{pct:g}%: p50 {' '.join(f'{d:+.0f}' for d in p50s)} (median {statistics.median(p50s):+.0f}, "
              f"{a} at most {b}'s in {sum(d <= 0 for d in p50s)} of {len(p50s)}); "
              f"p99 median {statistics.median(p99s):+.0f} ({sum(d <= 0 for d in p99s)} of {len(p99s)})")
PY
{
  echo
  echo "workers/shards: $WORKERS; proxy cpus $PROXY_CPUS; mock cpus $MOCK_CPUS; load cpus $LOAD_CPUS"
  echo "saturation: closed loop, $CONNECTIONS connections; open loop: up to $OPEN_CONNECTIONS in flight, poisson arrivals"
} | tee -a "$OUT.txt"
log "results: $OUT.txt $OUT.jsonl"
