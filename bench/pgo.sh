#!/usr/bin/env bash
# Builds the gateway as it should be deployed: profile-guided (PGO), then
# laid out again by BOLT from a second profile. An instrumented build serves
# a training load from shardgate-bench (chat, streams, Anthropic, MCP, keyed
# and audited requests, saturated and at a partial rate), and the release
# build is compiled again with that profile; BOLT then instruments that
# binary, the same load runs once more, and BOLT rewrites it with the hot
# path's blocks and functions packed together and the cold ones split off.
# So a request touches fewer instruction cache lines: at partial load each
# request runs its code path from a cold cache, which is where the
# gateway's CPU per request lost to nginx's.
#
#   bench/pgo.sh [--out DIR] [--seconds 3] [--no-bolt]
#
# Needs llvm-profdata of the LLVM major version rustc was built with
# (`rustc -vV`) and, unless --no-bolt, llvm-bolt and merge-fdata: Debian's
# llvm-NN and bolt-NN packages. Writes DIR/release/shardgate (default DIR:
# target/pgo) with a copy of shardgate-bench beside it, so every bench
# script runs it with `CARGO_TARGET_DIR=DIR bench/<script>.sh --no-build`.
# The profiles are DIR/shardgate.profdata and DIR/shardgate.fdata.
set -euo pipefail

OUT_DIR=
SECONDS_EACH=3
USE_BOLT=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --no-bolt) USE_BOLT=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init pgo
cd "$ROOT"
OUT_DIR=$(realpath -m "${OUT_DIR:-$ROOT/target/pgo}")
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

# find_llvm_tool NAME [any]: LLVM's tool NAME of rustc's LLVM major, whose
# profile format only that major reads; with `any`, of any version (BOLT
# reads any ELF binary).
find_llvm_tool() {
  local name=$1 any=${2:-} candidate path
  for candidate in "$name-$LLVM_MAJOR" "/usr/lib/llvm-$LLVM_MAJOR/bin/$name" "$name" \
    "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/$name" /usr/lib/llvm-*/bin/"$name"; do
    path=$(command -v "$candidate") || continue
    if [[ -n $any ]] || "$path" --version 2>/dev/null | grep -q "LLVM version $LLVM_MAJOR\."; then
      echo "$path"
      return 0
    fi
  done
  return 1
}
PROFDATA=$(find_llvm_tool llvm-profdata) || {
  log "no llvm-profdata for LLVM $LLVM_MAJOR (Debian: apt-get install llvm-$LLVM_MAJOR)"
  exit 1
}
if ((USE_BOLT)); then
  BOLT=$(find_llvm_tool llvm-bolt any) && MERGE_FDATA=$(find_llvm_tool merge-fdata any) || {
    log "no llvm-bolt and merge-fdata (Debian: apt-get install bolt-$LLVM_MAJOR), or pass --no-bolt"
    exit 1
  }
fi

# --target keeps the flags off build scripts and proc macros, which would
# otherwise write profiles of their own while compiling.
build_gateway() {
  local target_dir=$1 flags=$2
  RUSTFLAGS="${RUSTFLAGS:-} $flags" CARGO_TARGET_DIR=$target_dir \
    cargo build --release --target "$HOST" -p shardgate-core --bin shardgate
}

# A fixed path keeps the flags, and so the instrumented build, the same
# from one run to the next.
RAW=$ROOT/target/pgo-generate/profraw
log "building the load generator and the instrumented gateway"
cargo build --release -p shardgate-bench
BENCH=$ROOT/target/release/shardgate-bench
build_gateway "$ROOT/target/pgo-generate" "-Cprofile-generate=$RAW"
GATEWAY_BIN=$ROOT/target/pgo-generate/$HOST/release/shardgate
rm -rf "$RAW"

KEY=bench-key
# The gateway on a CPU of its own where there are two, so that the profile
# sees the parks and wake-ups of partial load as well as saturation.
cpu_layout 1 || { read -r PROXY_CPUS _ <<<"$(allowed_cpus)"; MOCK_CPUS=$PROXY_CPUS LOAD_CPUS=$PROXY_CPUS; }
start_mock "$MOCK_CPUS" 1
PLAIN_PORT=$MOCK_PORT
start_mock "$MOCK_CPUS" 1 --tps 20 --output-tokens 40
PACED_PORT=$MOCK_PORT

# One training load; a load that errors would train the error path instead.
load() {
  taskset -c "$LOAD_CPUS" "$BENCH" run --duration "${SECONDS_EACH}s" --warmup 500ms --shards 1 --json "$@" \
    | python3 -c '
import json, sys
r = json.load(sys.stdin)
n, errors = r["requests"], r["errors_total"]
args = sys.argv[1:]
for i, arg in enumerate(args[:-1]):
    if arg == "--api-key":
        args[i + 1] = "..."
print("pgo: %8d requests, %d errors: %s" % (n, errors, " ".join(args)), file=sys.stderr)
sys.exit(1 if errors or not n else 0)
' "$@"
}

# Traffic as operators run it: open and keyed callers, both dialects,
# streamed and not, MCP, saturated and paced.
train() {
  local base=http://127.0.0.1:$GW_PORT key=${1:-}
  local auth=()
  [[ -n $key ]] && auth=(--api-key "$key")
  load --url "$base/v1/chat/completions" --connections 64 "${auth[@]}"
  load --url "$base/v1/chat/completions" --connections 64 --rate 2000 "${auth[@]}"
  load --url "$base/v1/chat/completions" --connections 64 --stream "${auth[@]}"
  load --url "$base/v1/chat/completions" --connections 400 --stream --model paced \
    --ramp-up 400ms "${auth[@]}"
  load --url "$base/v1/messages" --connections 32 "${auth[@]}"
  load --url "$base/v1/messages" --connections 32 --stream "${auth[@]}"
  if [[ -z $key ]]; then
    load --url "$base/mcp" --api mcp --model mock.echo --api-key "$KEY" --connections 1
    load --url "$base/mcp" --api mcp --model mock.echo --api-key "$KEY" --connections 64
  fi
}

RUNS=0
run_gateway() {
  local extra=$1 key=
  RUNS=$((RUNS + 1))
  cat >"$WORK/shardgate.yaml" <<YAML
listen: 127.0.0.1:0
shards: 1
store: { dir: "$WORK/shardgate-data-$RUNS" }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$PLAIN_PORT/v1", api_key: $KEY }
  paced: { kind: openai, base_url: "http://127.0.0.1:$PACED_PORT/v1", api_key: $KEY }
models:
  demo: { targets: [ { provider: up, model: mock-1 } ] }
  paced: { targets: [ { provider: paced, model: mock-1 } ] }
$extra
YAML
  if [[ $extra == *policies:* ]]; then
    key=$(create_key "$GATEWAY_BIN" "$WORK/shardgate.yaml")
  fi
  launch_gateway "$PROXY_CPUS" "$WORK/shardgate.yaml" || exit 1
  train "$key"
  # The profile is written when the process exits normally: SIGTERM drains.
  kill -TERM "$GW_PID"
  wait "$GW_PID" || true
}

# Both configurations, against $GATEWAY_BIN.
train_all() {
  log "training $1: open callers and MCP"
  run_gateway "auth: none
mcp_servers: { mock: { url: \"http://127.0.0.1:$PLAIN_PORT/mcp\", bearer_token: $KEY } }"
  log "training $1: keyed callers with policy and audit"
  run_gateway "policies:
  - ai_runtime_policy:
      actor_scope: { team: bench }
      model_access: { allowed_models: [demo, paced] }
      budgets: { requests_per_minute: 1000000000, monthly_spend_usd: 1000000000 }
      audit: { log_prompts: metadata_only }
audit: { fsync: 100ms }"
}

train_all "the instrumented build"
mkdir -p "$OUT_DIR/release"
"$PROFDATA" merge -o "$OUT_DIR/shardgate.profdata" "$RAW"
log "profile: $OUT_DIR/shardgate.profdata"
USE_FLAGS="-Cprofile-use=$OUT_DIR/shardgate.profdata"
# BOLT rewrites a binary whose relocations were kept at link time.
((USE_BOLT)) && USE_FLAGS+=" -Clink-args=-Wl,--emit-relocs"
build_gateway "$ROOT/target/pgo-use" "$USE_FLAGS"
PGO_BIN=$ROOT/target/pgo-use/$HOST/release/shardgate

if ((USE_BOLT)); then
  # Each process writes its own profile when it exits normally.
  "$BOLT" "$PGO_BIN" -o "$WORK/shardgate.bolt-instrumented" -instrument \
    --instrumentation-file="$WORK/bolt.fdata" --instrumentation-file-append-pid
  GATEWAY_BIN=$WORK/shardgate.bolt-instrumented
  train_all "the BOLT-instrumented build"
  "$MERGE_FDATA" "$WORK"/bolt.fdata.* >"$OUT_DIR/shardgate.fdata"
  log "profile: $OUT_DIR/shardgate.fdata"
  "$BOLT" "$PGO_BIN" -o "$OUT_DIR/release/shardgate" -data="$OUT_DIR/shardgate.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=1 -use-gnu-stack
else
  cp "$PGO_BIN" "$OUT_DIR/release/shardgate"
fi
cp "$BENCH" "$OUT_DIR/release/shardgate-bench"
log "built $OUT_DIR/release/shardgate"
