# Shell helpers shared by the bench/ scripts (sourced, not run).

# Waits up to 15 s for a "PREFIX HOST:PORT..." line in FILE, written by the
# process PID; prints PORT. Fails if the process exits first.
wait_port() {
  local file=$1 prefix=$2 pid=$3 i line
  for ((i = 0; i < 150; i++)); do
    line=$(grep -m1 "^$prefix " "$file" 2>/dev/null || true)
    if [[ $line =~ ^$prefix\ [^\ ]*:([0-9]+) ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Stops every pid in the PIDS array and removes WORK (an EXIT trap).
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# --- Pinned side-by-side runs (compare-rate.sh, compare-streams.sh,
# compare-scaling.sh). They expect ROOT, WORK, BENCH, GATEWAY_BIN, PIDS and
# a log() function.

# The CPUs this shell may run on, in order (not necessarily 0..nproc-1).
allowed_cpus() {
  python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))'
}

# cpu_layout N: the proxy under test (N shards or workers) gets the 2nd to
# (N+1)th allowed CPUs, as an operator would pin it; the first allowed CPU
# and any beyond the proxy's go to the mock (the first half, at least one)
# and the load generator (the rest), each on its own CPUs when there are
# two or more. Sets PROXY_CPUS MOCK_CPUS LOAD_CPUS (taskset lists) and
# MOCK_SHARDS LOAD_SHARDS. Fails when the host has fewer than N+1 CPUs.
cpu_layout() {
  local n=$1 cpus rest m
  read -r -a cpus <<<"$(allowed_cpus)"
  ((${#cpus[@]} >= n + 1)) || return 1
  PROXY_CPUS=$(IFS=,; echo "${cpus[*]:1:n}")
  rest=("${cpus[0]}" "${cpus[@]:n+1}")
  if ((${#rest[@]} == 1)); then
    MOCK_CPUS=${rest[0]} LOAD_CPUS=${rest[0]} MOCK_SHARDS=1 LOAD_SHARDS=1
  else
    m=$((${#rest[@]} / 2))
    MOCK_CPUS=$(IFS=,; echo "${rest[*]:0:m}")
    LOAD_CPUS=$(IFS=,; echo "${rest[*]:m}")
    MOCK_SHARDS=$m LOAD_SHARDS=$((${#rest[@]} - m))
  fi
}

# Fails with a clear message unless taskset and nginx (unless SKIP_NGINX=1)
# are installed.
require_tools() {
  if ! command -v taskset >/dev/null; then
    log "taskset not found (package util-linux): these runs pin every process"
    return 1
  fi
  if [[ ${SKIP_NGINX:-0} != 1 ]] && ! command -v nginx >/dev/null; then
    log "nginx not found: install it (Debian/Ubuntu: apt-get install -y nginx-light," \
      "or nginx) or pass --skip-nginx to measure the gateway alone"
    return 1
  fi
}

# Raises the open-file limit for thousands of connections (each proxied
# stream holds two sockets in the proxy, one in the mock, one in the load
# generator); children inherit it.
raise_nofile() {
  local want=$1
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if (($(ulimit -n) < want)); then
    log "open-file limit is $(ulimit -n) (< $want): runs with many connections may fail"
  fi
}

# start_mock CPUS SHARDS [MOCK ARGS...]: sets MOCK_PID MOCK_PORT.
start_mock() {
  local cpus=$1 shards=$2
  shift 2
  taskset -c "$cpus" "$BENCH" mock --listen 127.0.0.1:0 --shards "$shards" --require-key "$KEY" \
    "$@" >"$WORK/mock.out" 2>"$WORK/mock.err" &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  MOCK_PORT=$(wait_port "$WORK/mock.out" "mock listening on" "$MOCK_PID") \
    || { log "mock did not start"; cat "$WORK/mock.err" >&2; return 1; }
  log "mock on 127.0.0.1:$MOCK_PORT (pid $MOCK_PID, cpus $cpus, $shards shard(s))"
}

# start_gateway CPUS SHARDS POOL: the gateway in front of the mock, confined
# by `taskset` and pinning its shards inside that set (its default), keeping
# up to POOL idle upstream connections per shard; GW_EXTRA_YAML, when set,
# is appended to its config. Sets GW_PID GW_PORT.
start_gateway() {
  local cpus=$1 shards=$2 pool=$3
  cat >"$WORK/shardgate.yaml" <<YAML
listen: 127.0.0.1:0
shards: $shards
auth: none
store: { dir: "$WORK/shardgate-data" }
upstream: { pool_max_idle_per_upstream: $pool }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
${GW_EXTRA_YAML:-}
YAML
  launch_gateway "$cpus" "$WORK/shardgate.yaml" || return 1
  log "gateway on 127.0.0.1:$GW_PORT (pid $GW_PID, cpus $cpus, $shards shard(s))"
}

# launch_gateway CPUS CONFIG: serves CONFIG under taskset on CPUS, output in
# $WORK/gateway.out and .err; sets GW_PID and GW_PORT once it listens.
launch_gateway() {
  local cpus=$1 config=$2
  taskset -c "$cpus" "$GATEWAY_BIN" serve --config "$config" \
    >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  GW_PORT=$(wait_port "$WORK/gateway.out" "shardgate listening on" "$GW_PID") \
    || { log "gateway did not start"; tail -n 20 "$WORK/gateway.err" >&2; return 1; }
}

# free_port: a TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nginx_conf PORT WORKERS CONNECTIONS KEEPALIVE MASTER: writes
# $NGINX_DIR/nginx.conf for nginx with the gateway's job in front of the
# mock ($MOCK_PORT): keep-alive upstream, the key ($KEY) injected, no
# buffering so streams flow event by event, one listening socket per
# worker (reuseport, as the gateway's SO_REUSEPORT), keep-alive never cut
# by a request count. NGINX_DIR is $WORK/nginx unless set (a second nginx
# beside the first needs its own). MASTER is on, or off for one process (valgrind
# follows no fork).
nginx_conf() {
  local port=$1 workers=$2 conns=$3 keepalive=$4 master=$5 user_line=""
  local dir=${NGINX_DIR:-$WORK/nginx}
  mkdir -p "$dir"
  if [[ $(id -u) -eq 0 ]]; then user_line="user root;"; fi
  cat >"$dir/nginx.conf" <<CONF
$user_line
worker_processes $workers;
worker_rlimit_nofile $((conns * 2 + 1024));
daemon off;
master_process $master;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((conns * 2 + 512)); }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive $keepalive;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $KEY";
      proxy_buffering off;
    }
  }
}
CONF
}

# start_nginx CPUS WORKERS CONNECTIONS KEEPALIVE: nginx_conf's proxy, run
# on CPUS. Sets NGINX_PID NGINX_PORT NGINX_WORKERS (comma-separated worker
# pids).
start_nginx() {
  local cpus=$1 workers=$2 conns=$3 keepalive=$4 port i n
  local dir=${NGINX_DIR:-$WORK/nginx}
  port=$(free_port)
  nginx_conf "$port" "$workers" "$conns" "$keepalive" on
  taskset -c "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    >"$dir.out" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  NGINX_PORT=$port NGINX_WORKERS=""
  for ((i = 0; i < 100; i++)); do
    n=$(pgrep -c -P "$NGINX_PID" || true)
    if ((n >= workers)); then
      NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | paste -sd, -)
      break
    fi
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $NGINX_WORKERS ]]; then
    log "nginx did not start"
    cat "$dir.out" "$dir/error.log" >&2 2>/dev/null || true
    return 1
  fi
  log "nginx on 127.0.0.1:$port (master $NGINX_PID, workers $NGINX_WORKERS, cpus $cpus)"
}

# Stops what start_* started and forgets it.
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# rss_kib PID[,PID...]: their resident memory together (VmRSS, KiB).
rss_kib() {
  local pid total=0 kib
  for pid in ${1//,/ }; do
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# peak_rss PIDS FILE: samples rss_kib every 100 ms until killed, keeping the
# highest in FILE. Run it in the background.
peak_rss() {
  local pids=$1 file=$2 peak=0 now
  while true; do
    now=$(rss_kib "$pids")
    if ((now > peak)); then
      peak=$now
      echo "$peak" >"$file"
    fi
    sleep 0.1
  done
}

# bench_init NAME: what every compare script sets up once it has sourced this
# file and set ROOT: the paths of the release binaries and of the results,
# a work directory that the EXIT trap removes (with every process in PIDS
# stopped), and `log` lines prefixed with NAME.
bench_init() {
  BENCH_NAME=$1
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  BENCH=$TARGET_DIR/release/shardgate-bench
  GATEWAY_BIN=$TARGET_DIR/release/shardgate
  RESULTS=$ROOT/bench/results
  WORK=$(mktemp -d "/tmp/shardgate-$1.XXXXXX")
  PIDS=()
  trap stop_all EXIT
  trap 'exit 130' INT TERM
}

log() { echo "${BENCH_NAME:-bench}: $*" >&2; }

# bench_policy [MORE_BUDGETS]: the policy keyed benches run under, as YAML:
# team bench may call `demo`, with budgets out of reach (MORE_BUDGETS, e.g.
# ", tokens_per_minute: N", is added to them).
bench_policy() {
  cat <<EOF
policies:
  - ai_runtime_policy:
      actor_scope: { team: bench }
      model_access: { allowed_models: ["demo"] }
      budgets: { requests_per_minute: 1000000000, monthly_spend_usd: 1000000000${1:-} }
EOF
}

# create_key BIN CONFIG: a new virtual key for team bench (tenant bench) in
# CONFIG's store; prints its secret.
create_key() {
  "$1" keys create --team bench --tenant bench --config "$2" --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])'
}

# build_release: builds the gateway and the load generator in release mode
# unless BUILD=0 (--no-build), then checks that both are there.
build_release() {
  if ((BUILD)); then
    log "building release"
    cargo build --release -p shardgate-bench -p shardgate-core
  fi
  local bin
  for bin in "$BENCH" "$GATEWAY_BIN"; do
    [[ -x $bin ]] || { log "missing $bin (build without --no-build)"; exit 1; }
  done
}
