#!/usr/bin/env bash
# The OCI runtime-tools validation suite against krunbox-oci: builds it from a runtime-tools
# source tree (its validation programs are not in Debian's golang-github-opencontainers-
# runtime-tools-dev, which ships only the libraries) with a Go of at least 1.21, runs every
# program and prints, per program, its TAP counts. Not part of scripts/test.sh (minutes, and
# it needs that source tree).
#
#   scripts/oci-validation.sh RUNTIME_TOOLS_DIR [GO [PROGRAM...]]   (default: every program)
set -euo pipefail
src=${1:?give the runtime-tools source directory}
go=${2:-go}
shift $(( $# < 2 ? $# : 2 ))
only=("$@")
cd "$(dirname "$0")/.."
root=$PWD
cargo build -q -p krunbox
work=$(mktemp -d /tmp/kbx-ocival-XXXX)
trap 'rm -rf "$work"' EXIT
ln -s "$root/target/debug/krunbox" "$work/krunbox-oci"
cd "$src"
export GOFLAGS=-mod=vendor GOTOOLCHAIN=local CGO_ENABLED=0
"$go" build -o runtimetest ./cmd/runtimetest
printf '%-40s %5s %7s %5s\n' PROGRAM OK "NOT OK" SKIP
for dir in validation/*/; do
  name=$(basename "$dir")
  [ "$name" = util ] && continue
  if [ ${#only[@]} -gt 0 ] && ! printf '%s\n' "${only[@]}" | grep -qx "$name"; then continue; fi
  "$go" build -o "$work/$name.t" "./validation/$name"
  out=$(RUNTIME="$work/krunbox-oci" timeout 300 "$work/$name.t" 2>&1 || true)
  ok=$(grep -cE '^ok [0-9]+' <<<"$out" || true)
  skip=$(grep -cE '^ok [0-9]+ # SKIP' <<<"$out" || true)
  bad=$(grep -cE '^not ok [0-9]+' <<<"$out" || true)
  printf '%-40s %5d %7d %5d\n' "$name" "$((ok - skip))" "$bad" "$skip"
  awk '/^not ok [0-9]+/ && n++ < 8 { print "    " $0 }' <<<"$out"
done
