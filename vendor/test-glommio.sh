#!/usr/bin/env bash
# Runs the vendored glommio's own unit tests (`cargo test --lib`), filtered
# to the modules named (default: net::, sys:: and iou::, the sockets, the
# io_uring reactor and its ring wrapper).
#
# glommio is not a member of our workspace, and cargo tests no package
# outside it that has dev-dependencies. So vendor/glommio is copied into a
# one-package workspace under the target directory, with our dev profile (the
# registry crates already built for the gateway are reused) and a committed
# lock file for glommio's dev-dependencies (vendor/glommio-tests.lock).
#
#   bash vendor/test-glommio.sh [FILTER...]
#   SHARDGATE_GLOMMIO_FALLBACK=1 bash vendor/test-glommio.sh net::
#
# Environment: CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=${CARGO_TARGET_DIR:-$PWD/target}
ws=$target/glommio-tests
mkdir -p "$ws"
rm -rf "$ws/glommio"
# -a keeps modification times: cargo rebuilds only what changed.
cp -a vendor/glommio "$ws/glommio"
cp vendor/glommio-tests.lock "$ws/Cargo.lock"
# The profile sections are the root Cargo.toml's.
cat >"$ws/Cargo.toml" <<'EOF'
[workspace]
resolver = "2"
members = ["glommio"]

[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
opt-level = 1
EOF

[ $# -gt 0 ] || set -- net:: sys:: iou::

# Skipped, by name:
# - tcp_connect_timeout_error expects a connection to 10.255.255.1:80 to
#   time out ("unroutable"); where something answers for that address (a
#   proxy or NAT, as on our build machines) it connects and the test fails.
skip=(net::tcp_socket::tests::tcp_connect_timeout_error)

CARGO_TARGET_DIR=$target cargo test --locked --manifest-path "$ws/Cargo.toml" -p glommio --lib \
  -- "$@" "${skip[@]/#/--skip=}"
