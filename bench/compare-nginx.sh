#!/usr/bin/env bash
# Side by side on this machine: the mock upstream called directly, through
# Shardgate, and through nginx (same worker/shard count), at 1 and 64
# connections, interleaved rounds. Prints the table and writes JSON + text
# under bench/results/ (gitignored).
#
#   bench/compare-nginx.sh [--workers N] [--rounds 3] [--duration 5s]
#       [--warmup 1s] [--connections 1,64] [--stream] [--max-tokens 16]
#       [--no-build] [--skip-gateway] [--skip-nginx] [-- EXTRA COMPARE ARGS]
#
# Servers (mock, gateway, nginx) are pinned to the first CPUs and the load
# generator to the others when the machine has at least 2 CPUs, so the tool
# that measures doesn't steal the measured servers' core. On a 2-CPU machine
# the mock shares CPU 0 with the proxy under test: proxied figures include
# that contention, the direct row doesn't.
set -euo pipefail

WORKERS=1
ROUNDS=3
DURATION=5s
WARMUP=1s
CONNECTIONS=1,64
MAX_TOKENS=16
STREAM=()
BUILD=1
GATEWAY=1
NGINX=1
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    --stream) STREAM=(--stream); shift ;;
    --no-build) BUILD=0; shift ;;
    --skip-gateway) GATEWAY=0; shift ;;
    --skip-nginx) NGINX=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init compare-nginx
KEY=bench-key

# CPU split: servers on the first CPUs, the load generator on the rest.
NPROC=$(nproc)
if ((NPROC >= 2)); then
  SERVER_CPUS=0-$((NPROC / 2 - 1))
  LOAD_CPUS=$((NPROC / 2))-$((NPROC - 1))
  LOAD_SHARDS=$((NPROC - NPROC / 2))
  SERVER_PIN=(taskset -c "$SERVER_CPUS")
  LOAD_PIN=(taskset -c "$LOAD_CPUS")
else
  SERVER_CPUS=all LOAD_CPUS=all LOAD_SHARDS=1
  SERVER_PIN=() LOAD_PIN=()
fi
if ! command -v taskset >/dev/null; then
  SERVER_PIN=() LOAD_PIN=()
  log "taskset not found: nothing pinned"
fi

cd "$ROOT"
if ((BUILD)); then
  log "building release: shardgate-bench"
  cargo build --release -p shardgate-bench
  if ((GATEWAY)); then
    log "building release: shardgate-core"
    cargo build --release -p shardgate-core || log "gateway build failed: skipping the gateway target"
  fi
fi
[[ -x $BENCH ]] || { log "missing $BENCH"; exit 1; }
if ((GATEWAY)) && [[ ! -x $GATEWAY_BIN ]]; then
  log "no gateway binary at $GATEWAY_BIN: skipping the gateway target"
  GATEWAY=0
fi

if ((NGINX)) && ! command -v nginx >/dev/null; then
  log "installing nginx from Debian"
  # Keep the package's init script from starting a system nginx on port 80.
  POLICY_ADDED=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    POLICY_ADDED=1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
    || true
  if ((POLICY_ADDED)); then rm -f /usr/sbin/policy-rc.d; fi
  if ! command -v nginx >/dev/null; then
    log "nginx could not be installed: skipping the nginx target"
    NGINX=0
  fi
fi

# 1. The mock upstream.
"${SERVER_PIN[@]}" "$BENCH" mock --listen 127.0.0.1:0 --shards "$WORKERS" \
  --require-key "$KEY" >"$WORK/mock.out" 2>"$WORK/mock.err" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK_PORT=$(wait_port "$WORK/mock.out" "mock listening on" "$MOCK_PID") \
  || { log "mock did not start"; cat "$WORK/mock.err" >&2; exit 1; }
log "mock on 127.0.0.1:$MOCK_PORT (pid $MOCK_PID, cpus $SERVER_CPUS)"
PATH_=/v1/chat/completions
TARGETS=(--target "direct=http://127.0.0.1:$MOCK_PORT$PATH_,pid=$MOCK_PID,model=mock-1,api-key=$KEY")

# 2. The gateway.
if ((GATEWAY)); then
  cat >"$WORK/shardgate.yaml" <<EOF
listen: 127.0.0.1:0
shards: $WORKERS
auth: none
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
EOF
  # --no-pin: taskset places it, as it does the mock and nginx.
  "${SERVER_PIN[@]}" "$GATEWAY_BIN" serve --config "$WORK/shardgate.yaml" --no-pin \
    >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  if GW_PORT=$(wait_port "$WORK/gateway.out" "shardgate listening on" "$GW_PID"); then
    log "gateway on 127.0.0.1:$GW_PORT (pid $GW_PID)"
    TARGETS+=(--target "gateway=http://127.0.0.1:$GW_PORT$PATH_,pid=$GW_PID,model=demo")
  else
    log "gateway did not start: skipping it"
    tail -n 20 "$WORK/gateway.err" >&2 || true
  fi
fi

# 3. nginx, same worker count, keep-alive upstream, injecting the key.
if ((NGINX)); then
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/nginx"
  USER_LINE=""
  if [[ $(id -u) -eq 0 ]]; then USER_LINE="user root;"; fi
  cat >"$WORK/nginx/nginx.conf" <<EOF
$USER_LINE
worker_processes $WORKERS;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $KEY";
      proxy_buffering off;
    }
  }
}
EOF
  "${SERVER_PIN[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
    >"$WORK/nginx.out" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  WORKER_PID=""
  for ((i = 0; i < 100; i++)); do
    WORKER_PID=$(pgrep -P "$NGINX_PID" | head -n1 || true)
    [[ -n $WORKER_PID ]] && break
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -n $WORKER_PID ]]; then
    log "nginx on 127.0.0.1:$NGINX_PORT (master $NGINX_PID, worker $WORKER_PID)"
    if ((WORKERS > 1)); then log "nginx: CPU measured for the first worker only"; fi
    TARGETS+=(--target "nginx=http://127.0.0.1:$NGINX_PORT$PATH_,pid=$WORKER_PID,model=mock-1")
  else
    log "nginx did not start: skipping it"
    cat "$WORK/nginx.out" "$WORK/nginx/error.log" >&2 2>/dev/null || true
  fi
fi

mkdir -p "$RESULTS"
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$RESULTS/compare-nginx-$STAMP
CMD=("${LOAD_PIN[@]}" "$BENCH" compare "${TARGETS[@]}" --rounds "$ROUNDS"
  --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS"
  --shards "$LOAD_SHARDS" --max-tokens "$MAX_TOKENS" "${STREAM[@]}"
  --out "$OUT.json" "${EXTRA[@]}")
log "servers on cpus $SERVER_CPUS, load generator on cpus $LOAD_CPUS ($LOAD_SHARDS shard(s))"
log "running: ${CMD[*]}"
"${CMD[@]}" | tee "$OUT.txt"
{
  echo
  echo "command: ${CMD[*]}"
  echo "workers/shards per server: $WORKERS; servers on cpus $SERVER_CPUS; load on cpus $LOAD_CPUS"
} >>"$OUT.txt"
log "results: $OUT.txt $OUT.json"
