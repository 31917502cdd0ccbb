#!/usr/bin/env bash
# Runs a representative part of the end-to-end suite as a normal user (not root), because
# krunbox must boot guests, with the same isolation, without privileges. scripts/test.sh calls
# it as root after the main suite; it needs the test binaries built (`cargo test --no-run`).
#
#   scripts/test-as-user.sh RESULTS_FILE
#
# The user `krunbox-ci` is created if missing. What it runs is staged in a world-readable
# temporary directory (the checkout itself may be private to root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
results=${1:-/dev/null}
user=krunbox-ci
[ "$(id -u)" -eq 0 ] || { echo "test-as-user: run as root (it switches to $user)" >&2; exit 2; }
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
home=$(getent passwd "$user" | cut -d: -f6)

stage=$(mktemp -d /tmp/kbx-user-XXXXXX)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
mkdir -p "$stage/debug/deps"
install -m 0755 target/debug/krunbox "$stage/debug/krunbox"
install -m 0755 target/guest-init/x86_64/guest-init "$stage/guest-init"
cp -r target/rootfs/default "$stage/default-image"
# -L: kernel/x86_64 is a link to the build of the current recipe.
cp -rL "${KRUNBOX_CACHE_DIR:-.krunbox-cache}/kernel/x86_64" "$stage/kernel"
# The Node.js SDK as built by scripts/setup-sdk.sh (its suite runs as the user too).
mkdir -p "$stage/sdk-node"
cp -r sdk/node/package.json sdk/node/dist sdk/node/node_modules sdk/node/test sdk/node/examples "$stage/sdk-node/"
chmod -R a+rX "$stage"
# The user's own default kernel, as scripts/setup.sh installs it for whoever runs it.
runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" \
  "$stage/debug/krunbox" kernel install "$stage/kernel"

# TEST_BINARY [FILTER...]
run_as_user() {
  local bin=$1; shift
  local exe; exe=$(test_binary "$bin")
  [ -n "$exe" ] || { echo "test-as-user: no test binary $bin" >&2; exit 1; }
  install -m 0755 "$exe" "$stage/debug/deps/"
  printf '\n== as %s (uid %s): %s %s\n' "$user" "$(id -u "$user")" "$bin" "$*" >&2
  runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" \
    KRUNBOX_REQUIRE_E2E=1 KRUNBOX_GUEST_INIT="$stage/guest-init" \
    KRUNBOX_DEFAULT_IMAGE="$stage/default-image" KRUNBOX_SDK_NODE_DIR="$stage/sdk-node" \
    "$stage/debug/deps/$(basename "$exe")" "$@" 2>&1 | tee -a "$results"
  return "${PIPESTATUS[0]}"
}

run_as_user run
run_as_user adversarial virtiofs::
run_as_user sandbox read_only_volumes_refuse_writes a_pooled_run a_review_workspace a_named_volume_keeps a_terminal_session
run_as_user network a_secret_goes_to_its_host_only host_ca_makes_the_guest_trust
run_as_user own_kernel the_installed_kernel_is_the_qemu_default
# krunbox serve and the Node.js SDK, unprivileged.
run_as_user sdk the_node_sdk_passes_its_suite_against_real_sandboxes
