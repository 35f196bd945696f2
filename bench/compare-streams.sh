#!/usr/bin/env bash
# Thousands of paced streams held open at once through Shardgate and through
# nginx (proxy_buffering off): the mock streams --output-tokens tokens at
# --tps tokens per second, each of --streams connections asks for the next
# stream as soon as one ends (closed loop), the connections opening evenly
# over one stream's length so that the streams don't run in step. Per
# proxy: streams/s, TTFT p50/p99, CPU per stream and per SSE event, RSS
# idle and at peak, and memory per active stream ((peak - idle) / streams:
# in a closed loop every connection is always streaming but for the moment
# between one stream's end and the next one's request), beside what an idle
# keep-alive connection costs (measured first, as many connections as
# streams) and the difference ("beyond"). Rounds interleave
# the proxies. Prints the table and writes text + JSON lines under
# bench/results/ (gitignored).
#
#   bench/compare-streams.sh [--streams 2000] [--tps 20] [--output-tokens 40]
#       [--workers 1] [--rounds 1] [--duration 6s] [--warmup RAMP+3s]
#       [--no-build] [--skip-nginx]
#
#   --streams N        concurrent streaming connections (and upstream ones)
#   --tps N            tokens per second of each stream (mock --tps)
#   --output-tokens N  tokens per stream (mock --output-tokens)
#   --workers N        gateway shards = nginx worker processes
#   --warmup           default: the ramp-up (one stream's length,
#                      output-tokens / tps) plus 3s, so that every
#                      connection is mid-cycle when the window opens
#
# OpenAI chat streams through both: the gateway relays them as received,
# nginx passes them through, so both do the same job.
#
# Pinning as in compare-rate.sh: the proxy under test on CPUs 1..N, the
# mock and the load generator on CPU 0 and any CPUs beyond. CPU: utime+stime
# from /proc/PID/stat of the gateway process or of every nginx worker at the
# edges of the measurement window (`run --watch-pid`), over the streams
# completed and over their SSE events. RSS: VmRSS from /proc/PID/status of
# the same processes (nginx: workers only; the master holds no
# connections), idle before the first load, peak sampled every 100 ms
# during each run.
set -euo pipefail

STREAMS=2000
TPS=20
OUTPUT_TOKENS=40
WORKERS=1
ROUNDS=1
DURATION=6s
WARMUP=
BUILD=1
SKIP_NGINX=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --tps) TPS=$2; shift 2 ;;
    --output-tokens) OUTPUT_TOKENS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --skip-nginx) SKIP_NGINX=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
PATH_=/v1/chat/completions
RAMP=$(python3 -c "print($OUTPUT_TOKENS / $TPS)")
WARMUP=${WARMUP:-$(python3 -c "print($RAMP + 3)")}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-streams
KEY=bench-key

require_tools || exit 1
cpu_layout "$WORKERS" || {
  log "$WORKERS worker(s) need $((WORKERS + 1)) CPUs (one for the load generator and mock); this host has $(nproc)"
  exit 1
}
raise_nofile $((4 * STREAMS + 4096))

cd "$ROOT"
build_release

start_mock "$MOCK_CPUS" "$MOCK_SHARDS" --tps "$TPS" --output-tokens "$OUTPUT_TOKENS"
# Pools as large as the streams, so a finished stream's upstream
# connection is reused, not closed and reopened, by both proxies.
start_proxies() {
  start_gateway "$PROXY_CPUS" "$WORKERS" "$STREAMS"
  NAMES=(gateway)
  URLS=("http://127.0.0.1:$GW_PORT$PATH_")
  MODELS=(demo)
  WATCH=("$GW_PID")
  if ((!SKIP_NGINX)); then
    start_nginx "$PROXY_CPUS" "$WORKERS" "$STREAMS" "$STREAMS"
    NAMES+=(nginx)
    URLS+=("http://127.0.0.1:$NGINX_PORT$PATH_")
    MODELS+=(mock-1)
    WATCH+=("$NGINX_WORKERS")
  fi
}
start_proxies
log "proxy on cpus $PROXY_CPUS; mock on $MOCK_CPUS; load generator on $LOAD_CPUS ($LOAD_SHARDS shard(s))"

# What an idle keep-alive connection costs each proxy, before any stream:
# as many connections as streams, each after one small request (a GET of
# /v1/models: the gateway answers it, nginx proxies it), RSS before and
# after. A stream's cost beyond this is what it holds for being a stream.
idle_conn_kib() {
  python3 - "$1" "$2" "$3" <<'PY'
import resource, socket, sys, time
pids, url, n = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
host, port = url.split("//")[1].split("/")[0].split(":")
def rss():
    return sum(int(l.split()[1]) for p in pids for l in open(f"/proc/{p}/status") if l.startswith("VmRSS"))
before = rss()
req = f"GET /v1/models HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer sk-test\r\n\r\n".encode()
socks = []
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(req)
    socks.append(s)
for s in socks:
    s.settimeout(30)
    s.recv(65536)
time.sleep(1.0)
print(f"{(rss() - before) / n:.1f}")
for s in socks:
    s.close()
PY
}
IDLE_CONN=()
for i in "${!NAMES[@]}"; do
  IDLE_CONN+=("$(taskset -c "$LOAD_CPUS" bash -c "$(declare -f idle_conn_kib); idle_conn_kib '${WATCH[i]}' '${URLS[i]}' '$STREAMS'")")
  log "${NAMES[i]}: an idle keep-alive connection costs ${IDLE_CONN[i]} KiB"
done
# Fresh proxies for the streams: memory the idle connections left with the
# allocator would otherwise blur what the streams take.
kill "$GW_PID" ${NGINX_PID:+"$NGINX_PID"} 2>/dev/null || true
wait "$GW_PID" ${NGINX_PID:+"$NGINX_PID"} 2>/dev/null || true
start_proxies

IDLE=()
for i in "${!NAMES[@]}"; do IDLE+=("$(rss_kib "${WATCH[i]}")"); done

mkdir -p "$RESULTS"
OUT=$RESULTS/compare-streams-$(date +%Y%m%d-%H%M%S)
: >"$OUT.jsonl"

for ((round = 1; round <= ROUNDS; round++)); do
  for i in "${!NAMES[@]}"; do
    rm -f "$WORK/peak"
    taskset -c "$LOAD_CPUS" bash -c "$(declare -f rss_kib peak_rss); peak_rss '${WATCH[i]}' '$WORK/peak'" &
    SAMPLER=$!
    json=$(taskset -c "$LOAD_CPUS" "$BENCH" run --url "${URLS[i]}" --model "${MODELS[i]}" \
      --stream --connections "$STREAMS" --shards "$LOAD_SHARDS" \
      --duration "$DURATION" --warmup "$WARMUP" --ramp-up "$RAMP" --timeout 60s --watch-pid "${WATCH[i]}" \
      --max-tokens "$OUTPUT_TOKENS" --json)
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    python3 - "$round" "${NAMES[i]}" "${IDLE[i]}" "$(cat "$WORK/peak" 2>/dev/null || echo 0)" \
      "$json" "${IDLE_CONN[i]}" >>"$OUT.jsonl" <<'PY'
import json, sys
rnd, name, idle, peak, report, idle_conn = sys.argv[1:]
r = json.loads(report)
print(json.dumps({"round": int(rnd), "proxy": name, "rss_idle_kib": int(idle),
                  "rss_peak_kib": int(peak), "idle_conn_kib": float(idle_conn), "report": r}))
cpu = r.get("watched_cpu_us_per_request")
print(f"round {rnd} {name:<8} {r['requests_per_second']:.1f} streams/s  ttft p50 "
      f"{r['ttft_us']['p50'] / 1000:.2f}ms p99 {r['ttft_us']['p99'] / 1000:.2f}ms  cpu "
      f"{cpu if cpu is None else round(cpu, 1)} us/stream  rss peak {int(peak) / 1024:.1f} MiB"
      f"  errors {r['errors_total']}", file=sys.stderr)
PY
  done
done

python3 - "$OUT.jsonl" "$STREAMS" "$TPS" "$OUTPUT_TOKENS" <<'PY' | tee "$OUT.txt"
import json, statistics, sys
path, streams, tps, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = [json.loads(l) for l in open(path)]
first = runs[0]["report"]
m = first["machine"]
print(f"machine: nproc={m['nproc']} cpu=\"{m['cpu_model']}\" profile={m['profile']} git={m['git_rev']}")
print(f"{streams} concurrent streams (closed loop), {tokens} tokens at {tps} tokens/s each; warmup {first['warmup_s']}s + {first['duration_s']}s, "
      f"{max(r['round'] for r in runs)} interleaved round(s); load generator {first['shards']} shard(s)")
print("ttft: median over rounds; cpu: all rounds' CPU over all rounds' streams/events; rss: highest peak")
print("expected streams/s at most streams x tps / output tokens; below it, the streams took longer than paced")
print()
print(f"{'proxy':<8} {'streams/s':>9} {'events/str':>10} {'ttft p50':>9} {'ttft p99':>9} "
      f"{'us/stream':>9} {'us/event':>8} {'cores':>6} {'idle MiB':>8} {'peak MiB':>8} "
      f"{'KiB/stream':>10} {'idle conn':>9} {'beyond':>6} {'errors':>6}")
for proxy in dict.fromkeys(r["proxy"] for r in runs):
    sel = [r for r in runs if r["proxy"] == proxy]
    rs = [r["report"] for r in sel]
    ok = sum(r["requests"] for r in rs)
    events = sum(r["requests"] * (r["sse_events_per_request"] or 0) for r in rs)
    cpus = [r["watched_cpu_us"] for r in rs]
    known = None not in cpus
    cpu = sum(cpus) if known else None
    secs = sum(r["duration_s"] for r in rs)
    idle = sel[0]["rss_idle_kib"]
    peak = max(r["rss_peak_kib"] for r in sel)
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    print(f"{proxy:<8} {statistics.median(r['requests_per_second'] for r in rs):>9.1f} "
          f"{events / ok if ok else 0:>10.1f} "
          f"{statistics.median(r['ttft_us']['p50'] for r in rs) / 1000:>7.2f}ms "
          f"{statistics.median(r['ttft_us']['p99'] for r in rs) / 1000:>7.2f}ms "
          f"{f(cpu / ok if known and ok else None, '.1f'):>9} "
          f"{f(cpu / events if known and events else None, '.2f'):>8} "
          f"{f(cpu / 1e6 / secs if known else None, '.2f'):>6} "
          f"{idle / 1024:>8.1f} {peak / 1024:>8.1f} {(peak - idle) / streams:>10.1f} "
          f"{sel[0]['idle_conn_kib']:>9.1f} {(peak - idle) / streams - sel[0]['idle_conn_kib']:>6.1f} "
          f"{sum(r['errors_total'] for r in rs):>6}")
PY
{
  echo
  echo "workers/shards: $WORKERS; proxy cpus $PROXY_CPUS; mock cpus $MOCK_CPUS; load cpus $LOAD_CPUS"
} | tee -a "$OUT.txt"
log "results: $OUT.txt $OUT.jsonl"
