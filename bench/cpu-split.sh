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
#       [--syscalls | --perf] [--no-build]
#
# --mode rate     open loop at --rate req/s, non-streaming chat (pick a rate
#                 from compare-rate.sh's saturation: 25% and 50% of it)
# --mode stream   --streams paced streams (40 tokens at 20 a second each)
# --mode mcp      MCP tools/call over --connections connections (closed loop)
# --baseline BIN  also runs an older gateway build, beside this tree's (A/B)
# --syscalls      counts per request: every system call (raw_syscalls), the
#                 waits (io_uring_enter, epoll_wait), the reads and writes,
#                 io_uring's waits and local task-work runs, context
#                 switches, kernel timers started and MSR writes (a wait's
#                 timer that is the CPU's earliest reprograms the timer
#                 hardware, which in a VM exits to the hypervisor), with
#                 `perf stat` on tracepoints (Debian:
#                 linux-perf). The tracepoints cost CPU themselves: compare
#                 CPU figures from runs without the flag.
# --perf          where the time goes per request, from a `perf record`
#                 (cpu-clock, 4 kHz, kernel call chains) over the window:
#                 kernel time in system calls, split by the syscall (the
#                 waits are io_uring_enter's and epoll_wait's), the rest of
#                 the kernel (interrupts, faults), and user space with its
#                 heaviest symbols. Unlike /proc's user/system split, which
#                 samples the mode at each tick, it says which syscall or
#                 function a microsecond belongs to. Sampling with call
#                 chains costs CPU itself (the /proc figures of such a run
#                 are several us a request higher, the sampled ones 2-3):
#                 compare the proxies within the run, not with runs
#                 without the flag.
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
PERF=0
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
    --perf) PERF=1; shift ;;
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
if ((SYSCALLS && PERF)); then
  log "--syscalls and --perf: one at a time (each one's sampling skews the other)"
  exit 2
fi
if ((SYSCALLS || PERF)) && ! command -v perf >/dev/null; then
  log "--syscalls and --perf need perf (Debian: apt-get install -y linux-perf)"
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
# Kernel timers started, and MSR writes (in a VM, the TSC deadline writes
# that reprogram the timer hardware exit to the hypervisor), where the
# kernel has the tracepoints.
for event in timer:hrtimer_start msr:write_msr; do
  if perf stat -e "$event" -- true >/dev/null 2>&1; then EVENTS+=,$event; fi
done

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
    elif ((PERF)); then
      perf record -q -e cpu-clock -F 4000 -g -p "$pid" -o "$WORK/perf.data" -- sleep "$DURATION" \
        >/dev/null 2>&1
      # Samples by binary (exact counts: kernel or user), then by symbol
      # with the time under each (children: a syscall's whole cost).
      { perf report -i "$WORK/perf.data" --no-children -n --sort dso --stdio -g none
        perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none; } \
        2>/dev/null >"$WORK/perf.txt"
    else
      sleep "$DURATION"
    fi
    read -r u1 s1 < <(cpu_ticks "$pid")
    wait "$load"
    python3 - "${NAMES[i]}" "$round" "$MODE" "$DURATION" "$TICK" "$u0" "$s0" "$u1" "$s1" \
      "$WORK/run.json" "$WORK/perf.txt" "$PERF" <<'PY' | tee -a "$OUT"
import json, re, sys
name, rnd, mode, dur, tick, u0, s0, u1, s1, run, perf, profiled = sys.argv[1:]
dur, tick = float(dur), int(tick)
r = json.load(open(run))
# The window's requests (or events), at the run's steady rate.
if mode == "stream":
    per, unit = r["token_events_total"] / r["duration_s"] * dur, "event"
else:
    per, unit = r["requests_per_second"] * dur, "request"
user = (int(u1) - int(u0)) / tick * 1e6 / per
system = (int(s1) - int(s0)) / tick * 1e6 / per
lines = []
if profiled == "1":
    # The dso report's lines: "self% samples binary"; the symbol report's:
    # "children% self% [k or .] symbol". The event count is the window's
    # sampled CPU time in ns (the first report's, which is the same).
    text = open(perf).read()
    m = re.search(r"Event count \(approx\.\): (\d+)", text)
    sampled = int(m.group(1)) / 1e3 / per if m else 0.0
    by_dso = {f.group(2): int(f.group(1)) for f in
              re.finditer(r"^\s+[\d.]+%\s+(\d+)\s+(\S+)\s*$", text, re.M)}
    samples = sum(by_dso.values()) or 1
    kernel = sampled * sum(n for d, n in by_dso.items() if d.startswith("[kernel")) / samples
    children, self_ = {}, {}
    for f in re.finditer(r"^\s+([\d.]+)%\s+([\d.]+)%\s+\[(.)\] (.+?)\s*$", text, re.M):
        children[f.group(3), f.group(4)] = float(f.group(1)) * sampled / 100
        self_[f.group(3), f.group(4)] = float(f.group(2)) * sampled / 100
    syscalls = children.get(("k", "do_syscall_64"), 0.0)
    # Each syscall under the first frame the unwinder sees below the entry:
    # __x64_sys_*, or __do_sys_* and do_/ksys_ helpers where the wrapper
    # is a tail call (io_uring_enter, writev, write).
    helpers = {"do_writev": "writev", "do_readv": "readv", "ksys_write": "write", "ksys_read": "read"}
    calls = {}
    for (mode_, sym), v in children.items():
        call = helpers.get(sym) or re.sub(r"^__(x64|do)_sys_", "", sym)
        if mode_ == "k" and call != sym:
            calls[call] = max(calls.get(call, 0.0), v)
    by_call = sorted(((v, call) for call, v in calls.items() if v >= 0.05), reverse=True)
    user_syms = sorted(((v, sym) for (mode_, sym), v in self_.items() if mode_ == "."), reverse=True)
    lines.append(f"sampled us/{unit} {sampled:.1f}: kernel {kernel:.1f} = syscalls {syscalls:.1f} ("
                 + ", ".join(f"{sym} {v:.2f}" for v, sym in by_call)
                 + f") + other {kernel - syscalls:.1f}; user {sampled - kernel:.1f}")
    lines.append("user top: " + ", ".join(f"{sym[:48]} {v:.2f}" for v, sym in user_syms[:8]))
else:
    counts = []
    for line in open(perf):
        f = line.strip().split(",")
        if len(f) > 3 and f[0].replace(".", "").isdigit() and float(f[0]) > 0:
            counts.append(f"{f[2].split(':')[-1].replace('sys_enter_', '')} {float(f[0]) / per:.2f}")
    if counts:
        lines.append(f"per {unit}: " + ", ".join(counts))
lat = r["latency_us"] if mode != "stream" else r["ttft_us"]
print(f"round {rnd} {name:<9} {r['requests_per_second']:9.0f}/s  user {user:5.1f}  sys {system:5.1f}"
      f"  total {user + system:5.1f} us/{unit}  {'ttft ' if mode == 'stream' else ''}p50 {lat['p50']}us"
      f" p99 {lat['p99']}us  errors {r['errors_total']}" + "".join(f"\n    {x}" for x in lines))
PY
  done
done
log "results: $OUT"
