#!/usr/bin/env bash
# Where a proxy's CPU goes, side by side with nginx in one run: user and
# system time per request (per streamed event with --mode stream), from
# /proc/PID/stat over a window inside each run, and with --syscalls the
# system calls, io_uring waits and context switches behind them. For the
# question compare-rate.sh and compare-streams.sh leave open: which part of
# a gap is the gateway's own code (user) and which the kernel's (sys).
#
#   bench/cpu-split.sh [--mode rate|stream|mcp] [--rate 27000] [--streams 2000]
#       [--connections 1] [--rounds 3] [--duration 5] [--baseline BIN]
#       [--syscalls] [--no-build]
#
# --mode rate     open loop at --rate req/s, non-streaming chat (pick a rate
#                 from compare-rate.sh's saturation: 25% and 50% of it)
# --mode stream   --streams paced streams (40 tokens at 20 a second each)
# --mode mcp      MCP tools/call over --connections connections (closed loop)
# --baseline BIN  also runs an older gateway build, beside this tree's (A/B)
# --syscalls      counts per request: every system call (raw_syscalls), the
#                 waits (io_uring_enter, epoll_wait), the reads and writes,
#                 io_uring's waits and local task-work runs, and context
#                 switches, with `perf stat` on tracepoints (Debian:
#                 linux-perf). The tracepoints cost CPU themselves: compare
#                 CPU figures from runs without the flag.
#
# Layout as compare-rate.sh: the proxies on CPU 1 (taskset; one shard, one
# nginx worker), the mock and the load generator on CPU 0. Rounds
# interleave the proxies; each line is one proxy's round.
set -euo pipefail

MODE=rate
RATE=27000
STREAMS=2000
CONNECTIONS=1
ROUNDS=3
DURATION=5
BASELINE=
SYSCALLS=0
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) MODE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --syscalls) SYSCALLS=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
case $MODE in rate | stream | mcp) ;; *) echo "--mode: rate, stream or mcp" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init cpu-split
KEY=bench-key

require_tools || exit 1
if ((SYSCALLS)) && ! command -v perf >/dev/null; then
  log "--syscalls needs perf (Debian: apt-get install -y linux-perf)"
  exit 1
fi
cpu_layout 1 || { log "needs 2 CPUs"; exit 1; }
raise_nofile $((4 * STREAMS + 4096))
cd "$ROOT"
build_release
[[ -z $BASELINE || -x $BASELINE ]] || { log "--baseline $BASELINE is not an executable"; exit 1; }

if [[ $MODE == stream ]]; then
  start_mock "$MOCK_CPUS" "$MOCK_SHARDS" --tps 20 --output-tokens 40
else
  start_mock "$MOCK_CPUS" "$MOCK_SHARDS"
fi
if [[ $MODE == mcp ]]; then
  GW_EXTRA_YAML="mcp_servers: { mock: { url: \"http://127.0.0.1:$MOCK_PORT/mcp\", bearer_token: $KEY } }"
fi

NAMES=() PIDS_=() URLS=() MODELS=()
# A gateway of BIN under NAME, with its own store directory.
add_gateway() {
  local name=$1 bin=$2 work=$WORK
  WORK=$WORK/$name
  mkdir -p "$WORK"
  GATEWAY_BIN=$bin start_gateway "$PROXY_CPUS" 1 1024
  WORK=$work
  NAMES+=("$name") PIDS_+=("$GW_PID")
  if [[ $MODE == mcp ]]; then
    URLS+=("http://127.0.0.1:$GW_PORT/mcp") MODELS+=(mock.echo)
  else
    URLS+=("http://127.0.0.1:$GW_PORT/v1/chat/completions") MODELS+=(demo)
  fi
}
add_gateway gateway "$GATEWAY_BIN"
[[ -z $BASELINE ]] || add_gateway baseline "$BASELINE"
start_nginx "$PROXY_CPUS" 1 "$((STREAMS + 64))" 1024
NAMES+=(nginx) PIDS_+=("$NGINX_WORKERS")
if [[ $MODE == mcp ]]; then
  URLS+=("http://127.0.0.1:$NGINX_PORT/mcp") MODELS+=(echo)
else
  URLS+=("http://127.0.0.1:$NGINX_PORT/v1/chat/completions") MODELS+=(mock-1)
fi
log "proxies on cpu $PROXY_CPUS; mock on $MOCK_CPUS; load generator on $LOAD_CPUS"

case $MODE in
  rate) LOAD=(--rate "$RATE" --connections 512 --max-tokens 16) WARM=2 ;;
  stream) LOAD=(--stream --connections "$STREAMS" --ramp-up 3s --timeout 60s --max-tokens 40) WARM=6 ;;
  mcp) LOAD=(--api mcp --connections "$CONNECTIONS") WARM=2 ;;
esac
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait
EVENTS+=,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read
EVENTS+=,syscalls:sys_enter_readv,syscalls:sys_enter_write,syscalls:sys_enter_writev
EVENTS+=,io_uring:io_uring_cqring_wait,io_uring:io_uring_local_work_run,sched:sched_switch

mkdir -p "$RESULTS"
OUT=$RESULTS/cpu-split-$MODE-$(date +%Y%m%d-%H%M%S).txt
TICK=$(getconf CLK_TCK)
# utime and stime (clock ticks) of every thread of PID, summed over the
# comma-separated PIDs (nginx's workers).
cpu_ticks() {
  local pid u=0 s=0 a b
  for pid in ${1//,/ }; do
    read -r a b < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    u=$((u + a)) s=$((s + b))
  done
  echo "$u $s"
}

for ((round = 1; round <= ROUNDS; round++)); do
  for i in "${!NAMES[@]}"; do
    pid=${PIDS_[i]}
    taskset -c "$LOAD_CPUS" "$BENCH" run --url "${URLS[i]}" --model "${MODELS[i]}" --api-key "$KEY" \
      "${LOAD[@]}" --shards "$LOAD_SHARDS" --duration "$((DURATION + WARM + 2))s" --warmup 1s \
      --json >"$WORK/run.json" &
    load=$!
    sleep "$WARM"
    read -r u0 s0 < <(cpu_ticks "$pid")
    : >"$WORK/perf.txt"
    if ((SYSCALLS)); then
      perf stat -x, -e "$EVENTS" -p "$pid" -o "$WORK/perf.txt" -- sleep "$DURATION"
    else
      sleep "$DURATION"
    fi
    read -r u1 s1 < <(cpu_ticks "$pid")
    wait "$load"
    python3 - "${NAMES[i]}" "$round" "$MODE" "$DURATION" "$TICK" "$u0" "$s0" "$u1" "$s1" \
      "$WORK/run.json" "$WORK/perf.txt" <<'PY' | tee -a "$OUT"
import json, sys
name, rnd, mode, dur, tick, u0, s0, u1, s1, run, perf = sys.argv[1:]
dur, tick = float(dur), int(tick)
r = json.load(open(run))
# The window's requests (or events), at the run's steady rate.
if mode == "stream":
    per, unit = r["token_events_total"] / r["duration_s"] * dur, "event"
else:
    per, unit = r["requests_per_second"] * dur, "request"
user = (int(u1) - int(u0)) / tick * 1e6 / per
system = (int(s1) - int(s0)) / tick * 1e6 / per
counts = []
for line in open(perf):
    f = line.strip().split(",")
    if len(f) > 3 and f[0].replace(".", "").isdigit() and float(f[0]) > 0:
        counts.append(f"{f[2].split(':')[-1].replace('sys_enter_', '')} {float(f[0]) / per:.2f}")
lat = r["latency_us"] if mode != "stream" else r["ttft_us"]
print(f"round {rnd} {name:<9} {r['requests_per_second']:9.0f}/s  user {user:5.1f}  sys {system:5.1f}"
      f"  total {user + system:5.1f} us/{unit}  {'ttft ' if mode == 'stream' else ''}p50 {lat['p50']}us"
      f" p99 {lat['p99']}us  errors {r['errors_total']}" + ("\n    per " + unit + ": " + ", ".join(counts) if counts else ""))
PY
  done
done
log "results: $OUT"
