#!/usr/bin/env bash
# Rebuilds the patched glommio from the pristine crate and the patch series:
# copies vendor/glommio-0.9.0 (glommio 0.9.0 from crates.io, trimmed) to a
# temporary directory and applies vendor/patches/*.patch in name order.
#
#   bash vendor/rebuild.sh           check that the result is vendor/glommio,
#                                    byte for byte (and executable bits); exits 1
#                                    with a summary of the differences if not
#   bash vendor/rebuild.sh --write   replace vendor/glommio with the result
#
# vendor/README.md says how to change a patch or add one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here=$PWD

PRISTINE=glommio-0.9.0
TARGET=glommio

case "${1:-}" in
  "") mode=check ;;
  --write) mode=write ;;
  -h | --help) sed -n '2,11p' "$here/rebuild.sh"; exit 0 ;;
  *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree=$tmp/$TARGET
cp -a "$PRISTINE" "$tree"

shopt -s nullglob
patches=(patches/[0-9][0-9][0-9][0-9]-*.patch)
[ ${#patches[@]} -gt 0 ] || { echo "rebuild.sh: no patches in vendor/patches" >&2; exit 1; }
for p in "${patches[@]}"; do
  # GIT_CEILING_DIRECTORIES: git apply works as a plain patch tool here even
  # when TMPDIR lies inside a repository (it would apply relative to its root).
  if ! (cd "$tree" && GIT_CEILING_DIRECTORIES=$tmp git apply --whitespace=nowarn "$here/$p"); then
    echo "rebuild.sh: $p does not apply" >&2
    exit 1
  fi
done

if [ "$mode" = write ]; then
  rm -rf "$TARGET"
  cp -a "$tree" "$TARGET"
  echo "rebuild.sh: wrote vendor/$TARGET (${#patches[@]} patches on vendor/$PRISTINE)"
  exit 0
fi

# Executable files, relative paths, one per line (git tracks only that bit).
executables() { (cd "$1" && find . -type f -perm -u+x | LC_ALL=C sort); }

fail=0
if ! diff -r --no-dereference -q "$tree" "$TARGET" >"$tmp/summary"; then
  fail=1
  echo "rebuild.sh: vendor/$TARGET differs from ${#patches[@]} patches on vendor/$PRISTINE:" >&2
  sed -e "s|$tree|rebuilt|g" -e "s|^Only in $TARGET|Only in vendor/$TARGET|" \
    -e "s| $TARGET/| vendor/$TARGET/|g" "$tmp/summary" >&2
  diff -r --no-dereference -u "$tree" "$TARGET" | grep -v '^Only in' | sed "s|$tree|rebuilt|g" |
    head -n 40 >&2 || true
fi
if ! diff <(executables "$tree") <(executables "$TARGET") >"$tmp/modes"; then
  fail=1
  echo "rebuild.sh: executable bits differ (< rebuilt, > vendor/$TARGET):" >&2
  grep '^[<>]' "$tmp/modes" >&2
fi
if [ $fail -ne 0 ]; then
  echo "rebuild.sh: run 'bash vendor/rebuild.sh --write' to take the series as it is, or fix the patches" >&2
  exit 1
fi
echo "rebuild.sh: vendor/$TARGET = vendor/$PRISTINE + ${#patches[@]} patches"
