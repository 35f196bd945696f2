#!/usr/bin/env bash
# Instructions the gateway executes in user space per proxied request, counted
# by valgrind's callgrind under steady load (64 connections, non-streaming
# chat completions through the mock upstream). Unlike CPU time, the count does
# not drift with a shared machine's noise, so two builds compare to a fraction
# of a percent: run it on each (--gateway BIN) and compare the figures.
# Kernel time (most of a proxied request's CPU) is not counted.
#
#   bench/instructions.sh [--gateway BIN (default: this tree's, built)] [--seconds 10]
#       [--endpoint /v1/chat/completions] [--keep-turns] [--keep-out DIR]
#       [--audit] [--auth] [--mcp] [--rate R] [--stream] [--nginx] [--cache]
#
# --rate R counts an open loop at R requests a second instead of the closed
# loop: the gateway under callgrind saturates near 3,000 req/s, so at 200
# every request wakes a parked shard, and the figure includes what waking
# and parking cost (partial load), which saturation spreads over many
# requests.
# --endpoint /v1/responses counts the Responses API passed through, to
# compare with chat in the same way: on a gateway that keeps no turns
# unless --keep-turns (the store thread's work is counted too).
# --audit writes the audit log (fsync every 100 ms), the writer thread's
# work included in the count.
# --auth calls with a virtual key under a policy (a team's allowed models
# and request and spend budgets), as compare-auth.sh's key+policy gateway:
# what authenticating and admitting a caller add (with --audit as well,
# the audit line carries the caller).
# --mcp counts MCP tools/call (an echo tool of the mock's MCP endpoint,
# called as mock.echo through /mcp) instead of chat.
# --stream counts paced streams instead (the mock emits 40 tokens at 20 a
# second, 44 events a stream, 100 streams at once), per stream and per
# streamed event: the relay of events that arrive one read each, as a real
# model's do.
# --keep-out DIR keeps callgrind's profiles there, for callgrind_annotate.
# --cache also simulates the caches (callgrind --cache-sim, this CPU's L1
# sizes, no prefetch) and prints the L1 instruction and data misses per
# request or event: where two proxies run about as many instructions, the
# misses say which one's code and data outgrow the L1 on each request.
# --nginx counts nginx instead (one process, no master, the same keep-alive
# proxy to the same mock as compare-rate.sh's), under the same load: the
# peer's user-space instructions a request or event, noise-free, to set
# beside the gateway's. Not with --auth, --audit or --keep-turns.
#
# Needs valgrind (Debian: apt-get install valgrind). The gateway runs ~50x
# slower under callgrind; the figure is per request, so that does not matter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

TARGET_DIR=${CARGO_TARGET_DIR:-target}
GATEWAY_BIN=
BENCH=$TARGET_DIR/release/shardgate-bench
SECONDS_=10
ENDPOINT=/v1/chat/completions
KEEP_OUT=
STORE_EXTRA=", responses_max_bytes: 0"
AUDIT=
AUTH=
RATE=
STREAM=
NGINX=
CACHE_SIM=()
CONNECTIONS=64
MOCK_ARGS=()
LOAD=(--model demo --max-tokens 16)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gateway) GATEWAY_BIN=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --endpoint) ENDPOINT=$2; shift 2 ;;
    --keep-out) KEEP_OUT=$2; shift 2 ;;
    --keep-turns) STORE_EXTRA=; shift ;;
    --audit) AUDIT=1; shift ;;
    --auth) AUTH=1; shift ;;
    --mcp) ENDPOINT=/mcp LOAD=(--api mcp --model mock.echo); shift ;;
    --rate) RATE=$2; shift 2 ;;
    --nginx) NGINX=1; shift ;;
    --cache) CACHE_SIM=(--cache-sim=yes); shift ;;
    --stream) STREAM=1 CONNECTIONS=100 MOCK_ARGS=(--tps 20 --output-tokens 40)
      LOAD=(--model demo --max-tokens 40 --stream); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
if [[ -n $NGINX ]]; then
  command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install -y nginx-light)" >&2; exit 1; }
  [[ -z $AUTH$AUDIT && $STORE_EXTRA ]] \
    || { echo "--nginx does not go with --auth, --audit or --keep-turns" >&2; exit 2; }
fi
# The tree's own gateway is built first (nothing to do when it is fresh), so
# a figure is never from a stale binary; --gateway measures that one as is.
if [[ -z $GATEWAY_BIN ]]; then
  cargo build --release -p shardgate-core -p shardgate-bench
  GATEWAY_BIN=$TARGET_DIR/release/shardgate
fi
[[ -x $BENCH ]] || cargo build --release -p shardgate-bench

WORK=$(mktemp -d)
PIDS=()
trap stop_all EXIT

"$BENCH" mock --listen 127.0.0.1:0 --shards 1 --require-key k "${MOCK_ARGS[@]}" >"$WORK/mock.out" 2>&1 &
PIDS+=($!)
MOCK_PORT=$(wait_port "$WORK/mock.out" "mock listening on" "${PIDS[0]}")
cat >"$WORK/gw.yaml" <<EOF
listen: 127.0.0.1:0
shards: 1
store: { dir: $WORK/data$STORE_EXTRA }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: k }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
EOF
[[ $ENDPOINT != /mcp ]] \
  || echo "mcp_servers: { mock: { url: \"http://127.0.0.1:$MOCK_PORT/mcp\", bearer_token: k } }" >>"$WORK/gw.yaml"
[[ -z $AUDIT ]] || echo "audit: { dir: $WORK/audit, fsync: 100ms }" >>"$WORK/gw.yaml"
if [[ -n $AUTH ]]; then
  { bench_policy; echo "      audit: { log_prompts: metadata_only }"; } >>"$WORK/gw.yaml"
  KEY=$(create_key "$GATEWAY_BIN" "$WORK/gw.yaml")
  LOAD+=(--api-key "$KEY")
else
  echo "auth: none" >>"$WORK/gw.yaml"
fi
# The threshold the gateway would re-execute itself with on AMD
# (core/src/tunables.rs), given up front on every CPU: valgrind does not
# follow execve. Large copies then count as the vector loop's instructions,
# not `rep movsb`'s: figures before c97037e are ~20 lower a request.
# callgrind CMD...: CMD under callgrind in the background, output in
# $WORK/gw.out and .err; sets GW_PID.
callgrind() {
  GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1099511627776 \
    valgrind --tool=callgrind "${CACHE_SIM[@]}" --callgrind-out-file="$WORK/cg.out" \
    "$@" >"$WORK/gw.out" 2>"$WORK/gw.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
}
if [[ -z $NGINX ]]; then
  callgrind "$GATEWAY_BIN" serve --config "$WORK/gw.yaml" --no-pin
  GW_PORT=$(wait_port "$WORK/gw.out" "shardgate listening on" "$GW_PID")
else
  # start_nginx's proxy (bench/lib.sh), as one process, one worker (one
  # shard), with the key the mock requires.
  GW_PORT=$(free_port)
  KEY=k nginx_conf "$GW_PORT" 1 "$CONNECTIONS" 256 off
  callgrind nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT") 2>/dev/null && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gw.err" "$WORK/nginx/error.log" >&2; exit 1; }
    sleep 0.1
  done
  GATEWAY_BIN=$(command -v nginx)
fi

# Warm up (pools, buffers, lazily built tables), then count one load run.
"$BENCH" run --url "http://127.0.0.1:$GW_PORT$ENDPOINT" \
  "${LOAD[@]}" --connections "$CONNECTIONS" --duration 3s --warmup 0s --shards 1 >/dev/null
callgrind_control -z "$GW_PID" >/dev/null
"$BENCH" run --url "http://127.0.0.1:$GW_PORT$ENDPOINT" \
  "${LOAD[@]}" --connections "$CONNECTIONS" ${RATE:+--rate "$RATE"} --duration "${SECONDS_}s" --warmup 0s \
  --shards 1 >"$WORK/load.txt"
callgrind_control -d "$GW_PID" >/dev/null
sleep 1
# The count is dumped; a gateway under valgrind may not see SIGTERM (valgrind
# delivers signals to threads that wait for them only at its own pace).
kill -9 "$GW_PID" 2>/dev/null || true

requests=$(grep -oE '^requests: [0-9]+' "$WORK/load.txt" | grep -oE '[0-9]+$')
# The summary's first figure is Ir (the instructions); with --cache the
# misses follow it, named by the `events:` line.
instructions=$(awk '/^summary:/ { n += $2 } END { print n }' "$WORK"/cg.out.*)
[[ -z $KEEP_OUT ]] || { mkdir -p "$KEEP_OUT"; cp "$WORK"/cg.out.* "$KEEP_OUT"/; }
echo "$([[ -n $NGINX ]] && echo nginx || echo gateway): $GATEWAY_BIN ($ENDPOINT)"
echo "requests: $requests, user-space instructions: $instructions"
awk -v i="$instructions" -v r="$requests" 'BEGIN { printf "instructions per request: %.0f\n", i / r }'
if [[ -n $STREAM ]]; then
  # Each stream: a role chunk, 40 token chunks, a finish chunk, a usage
  # chunk and [DONE].
  awk -v i="$instructions" -v r="$requests" 'BEGIN { printf "instructions per streamed event: %.0f (44 a stream)\n", i / r / 44 }'
fi
if ((${#CACHE_SIM[@]})); then
  # Per request, or per event with --stream (44 a stream).
  awk -v r="$requests" -v per="$([[ -n $STREAM ]] && echo 44 || echo 1)" '
    /^events:/ { for (i = 2; i <= NF; i++) name[i] = $i }
    /^summary:/ { for (i = 2; i <= NF; i++) sum[name[i]] += $i }
    END {
      what = per == 1 ? "request" : "streamed event"
      printf "L1 instruction misses per %s: %.0f\n", what, sum["I1mr"] / r / per
      printf "L1 data misses per %s: %.0f (%.0f reads, %.0f writes)\n", what,
        (sum["D1mr"] + sum["D1mw"]) / r / per, sum["D1mr"] / r / per, sum["D1mw"] / r / per
    }' "$WORK"/cg.out.*
fi
