#!/usr/bin/env bash
# Shardgate's test command (the one the README documents, and what CI runs):
#   0. formatting, the vendored glommio rebuilt from its patch series, and
#   lints (clippy, warnings denied), 1. build every binary, 2. the Rust
#   tests, then glommio's own net and reactor tests, and those with
#   glommio's fallback rings (SHARDGATE_GLOMMIO_FALLBACK=1) with the
#   gateway's upstream client, streaming and upstream-pool tests, 3. the
#   Python end-to-end suite (the official SDKs against the freshly built
#   gateway and mock upstream).
# Exits non-zero on any failure.
#
# Environment:
#   PYTHON             interpreter for the venv (default: python3)
#   CARGO_TARGET_DIR   honoured; the e2e suite uses the binaries built here
# Arguments go to pytest: bash tests/run.sh -k "stream and not cut" -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --all --check"
cargo fmt --all --check

step "bash vendor/rebuild.sh (vendor/glommio = vendor/glommio-0.9.0 + vendor/patches)"
bash vendor/rebuild.sh

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --bins"
cargo build --workspace --bins

# The end-to-end tests (Rust and Python) start these binaries.
export SHARDGATE_BIN_DIR=${SHARDGATE_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/debug}

step "cargo test --workspace"
cargo test --workspace

# glommio is not a workspace member: its tests run through this script.
step "glommio's own tests: net::, sys::, iou:: and sync::gate (vendor/test-glommio.sh)"
bash vendor/test-glommio.sh net:: sys:: iou:: sync::gate

# glommio as on a kernel before 5.11 (no COOP_TASKRUN or DEFER_TASKRUN rings,
# one-shot read polls, no EXT_ARG waits; vendor/README.md), on this one.
step "SHARDGATE_GLOMMIO_FALLBACK=1: glommio's net tests, the upstream client's, streaming and upstream_pool"
SHARDGATE_GLOMMIO_FALLBACK=1 bash vendor/test-glommio.sh net:: sys::uring::tests::fallback_switch
SHARDGATE_GLOMMIO_FALLBACK=1 cargo test -p shardgate-core --lib client::
SHARDGATE_GLOMMIO_FALLBACK=1 cargo test -p shardgate-tests --test streaming --test upstream_pool

# ---- Python venv for the e2e suite ---------------------------------------
PY=${PYTHON:-python3}
VENV=.venv
REQ=tests/python/requirements.txt
STAMP=$VENV/.requirements.sha256

if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian ships venv/ensurepip separately (python3-venv): install it only
  # when it is missing.
  step "installing python3-venv"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "python${ver}-venv" || $SUDO apt-get install -y -qq python3-venv
fi

pyver=$("$PY" -c 'import sys; print(sys.version)')
want=$( { cat "$REQ"; echo "$pyver"; } | sha256sum | cut -d' ' -f1)
# (Re)create the venv when it is missing, broken, or from another interpreter.
if [ "$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true)" != "$pyver" ]; then
  step "creating $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  step "installing $REQ into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$STAMP"
fi

# Real parts the tests drive, Debian's packages, installed only when
# missing: Chromium for the status page, redis-server for the cluster.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
  step "installing$missing (Debian's packages) for the status page and cluster tests"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq $missing
fi

# ---- e2e suite --------------------------------------------------------------
step "pytest tests/python (binaries from $SHARDGATE_BIN_DIR)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
