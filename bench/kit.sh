#!/usr/bin/env bash
# The side-by-side benches on a many-core host that has neither cargo nor
# nginx (a lent machine with nothing to fetch from): `pack` gathers, here,
# what they need into bench/kit/ (gitignored); `run`, there, runs them from
# it, most important first, each within its own time limit.
#
#   bench/kit.sh pack [--target-dir DIR]   (default: target/pgo if it has
#                                          both binaries, else target)
#   bench/kit.sh run [--out DIR] [--quick]
#
# pack: the release shardgate and shardgate-bench of DIR, stripped, and
# this host's nginx, pgrep and taskset, each with the shared libraries it
# loads beyond glibc's, behind a wrapper that points the loader at them. About 30 MiB; build the
# binaries first (`cargo build --release --workspace --bins`, or
# bench/pgo.sh).
#
# run: compare-rate.sh at 25/50/90% on 1 shard with the control nginx,
# compare-streams.sh, compare-rate.sh on 4 shards, then compare-scaling.sh,
# all on the kit's binaries and nginx; each script's table is copied to
# --out (default bench/results/kit) as it finishes, so a run cut short
# keeps what ended.
# --quick shortens every step, to try the kit on a small host first.
# The layout is the scripts' own (bench/lib.sh cpu_layout): the proxy on
# CPUs 1..N, the mock and the load generator on the rest, each on its own
# CPUs once there are two or more spare.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/bench/kit

# What the scripts run that a bare image may lack: nginx, and procps'
# pgrep and util-linux's taskset (a minimal image can have neither).
TOOLS=(nginx pgrep taskset)

# pack_tool NAME: this host's NAME into $KIT/NAME/, with every library it
# loads but the C library's own (the other host has those), and a wrapper
# $KIT/bin/NAME that points the loader at them.
pack_tool() {
  local name=$1 path lib
  path=$(command -v "$name")
  mkdir -p "$KIT/$name/lib"
  cp -L "$path" "$KIT/$name/$name"
  ldd "$path" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
      *) cp -L "$lib" "$KIT/$name/lib/" ;;
    esac
  done
  cat >"$KIT/bin/$name" <<SH
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/../$name" && pwd)
LD_LIBRARY_PATH=\$here/lib exec "\$here/$name" "\$@"
SH
  chmod +x "$KIT/bin/$name"
}

pack() {
  local target=""
  while (($#)); do
    case $1 in
      --target-dir) target=$2; shift 2 ;;
      *) echo "kit pack: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  if [[ -z $target ]]; then
    target=$ROOT/target
    if [[ -x $ROOT/target/pgo/release/shardgate && -x $ROOT/target/pgo/release/shardgate-bench ]]; then
      target=$ROOT/target/pgo
    fi
  fi
  local bin
  for bin in shardgate shardgate-bench; do
    [[ -x $target/release/$bin ]] || { echo "kit pack: $target/release/$bin not built" >&2; exit 1; }
  done
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || { echo "kit pack: $tool not found here" >&2; exit 1; }
  done
  rm -rf "$KIT"
  mkdir -p "$KIT/release" "$KIT/bin"
  for bin in shardgate shardgate-bench; do
    strip -o "$KIT/release/$bin" "$target/release/$bin"
  done
  for tool in "${TOOLS[@]}"; do
    pack_tool "$tool"
  done
  (cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown) >"$KIT/revision"
  echo "kit: $(du -sh "$KIT" | cut -f1) in $KIT (binaries of $target, revision $(cat "$KIT/revision"))"
}

run() {
  local out=$ROOT/bench/results/kit quick=0
  while (($#)); do
    case $1 in
      --out) out=$2; shift 2 ;;
      --quick) quick=1; shift ;;
      *) echo "kit run: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  [[ -x $KIT/release/shardgate && -x $KIT/bin/nginx ]] \
    || { echo "kit run: no kit in $KIT (bench/kit.sh pack, on a host that has them)" >&2; exit 1; }
  "$KIT/bin/nginx" -v 2>/dev/null || { echo "kit run: the kit's nginx does not start here" >&2; exit 1; }
  mkdir -p "$out"
  export PATH=$KIT/bin:$PATH CARGO_TARGET_DIR=$KIT
  {
    echo "kit of revision $(cat "$KIT/revision"), $(date -u +%FT%TZ)"
    echo "nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), kernel $(uname -r)"
  } | tee "$out/host.txt"
  # step LIMIT_S NAME SCRIPT ARGS...: one bench within LIMIT_S seconds; its
  # newest results table lands in $out/NAME.txt.
  step() {
    local limit=$1 name=$2 script=$3
    shift 3
    echo "== $name: $script $* (at most ${limit}s)"
    local before
    before=$(date +%s)
    timeout -k 10 --signal=INT "$limit" bash "$ROOT/bench/$script" --no-build "$@" || echo "== $name: exit $?"
    local newest
    newest=$(find "$ROOT/bench/results" -maxdepth 1 -name "${script%.sh}-*.txt" -newermt "@$before" \
      | sort | tail -n 1)
    if [[ -n $newest ]]; then cp "$newest" "$out/$name.txt"; fi
  }
  if ((quick)); then
    step 120 rate-1 compare-rate.sh --rounds 1 --duration 2s --percents 25,50 --control
    step 90 streams compare-streams.sh --streams 500 --rounds 1 --duration 3s
    step 90 scaling compare-scaling.sh --counts 1 --rounds 1 --duration 2s
  else
    # Nine minutes at most. A step's table is written when it ends, so each
    # limit leaves room: rate-1 took 3 minutes on a 2-CPU host, streams
    # under one.
    step 240 rate-1 compare-rate.sh --rounds 4 --duration 3s --percents 25,50,90 --control
    step 100 streams compare-streams.sh --streams 4000 --workers 1 --rounds 2 --duration 6s
    step 110 rate-4 compare-rate.sh --workers 4 --rounds 2 --duration 3s --percents 25,50,90
    step 80 scaling compare-scaling.sh --counts 1,2,4,8 --rounds 1 --duration 4s
  fi
  echo "kit: tables in $out"
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
