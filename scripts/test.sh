#!/usr/bin/env bash
# The whole test suite: setup (idempotent), formatting, lints, macOS type-check, unit and
# end-to-end tests (real guests under QEMU, a real local registry; a part again as a normal
# user; the libkrun half inside an emulated KVM host), and a short fuzz run of every target.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Each step says when it starts, in minutes since the run began (where CI's time goes).
step() { printf '\n\033[1m== %s\033[0m (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)) >&2; }
# A cold run writes about 20 GiB (target/, the kernel build, images, test data). Without
# the room, say so now rather than fail half an hour in on "No space left on device".
need_gib=25
free_gib=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gib" -lt "$need_gib" ]; then
  echo "test.sh: only ${free_gib} GiB free on $(df -P . | awk 'NR == 2 { print $6 }'); a cold run needs about ${need_gib} GiB" >&2
  exit 1
fi
step "setup (packages, toolchains, krunbox, its kernel; the SDKs' dependencies)"
./scripts/setup.sh --no-demo
./scripts/setup-sdk.sh

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo check for macOS (aarch64-apple-darwin)"
# krunbox-image is checked through krunbox (which depends on it): on macOS it pulls with the
# system's TLS and pure-Rust zstd (image/Cargo.toml), so no C needs an Apple SDK here. The
# `secrets` feature (the gateway's TLS interception, aws-lc's C) is left out for that reason;
# a build on a Mac compiles it with Xcode's clang.
cargo check --target aarch64-apple-darwin -p krunbox -p krunbox-protocol -p krunbox-net --no-default-features
step "guest-init builds as static musl for x86_64 and aarch64"
cargo xtask build-init
step "tests (end-to-end tests must run: KRUNBOX_REQUIRE_E2E=1)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
KRUNBOX_REQUIRE_E2E=1 cargo test --workspace 2>&1 | tee "$results"
step "a representative part again as a normal user (krunbox needs no root)"
if [ "$(id -u)" -eq 0 ]; then
  ./scripts/test-as-user.sh "$results"
else
  echo "the whole suite already ran as a normal user (uid $(id -u))"
fi
step "the libkrun backend, booted for real inside a KVM host (scripts/test-krun.sh)"
./scripts/test-krun.sh "$results"
step "fuzz every parser of untrusted bytes (5 s each; long runs: cargo xtask fuzz --seconds N)"
cargo xtask fuzz --seconds 5
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
step "done"
