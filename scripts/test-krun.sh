#!/usr/bin/env bash
# The libkrun half of the end-to-end suite: test binaries run with KRUNBOX_TEST_BACKEND=krun,
# each inside one KVM host (`cargo xtask kvm-host`: QEMU TCG emulating AMD SVM, Debian's cloud
# kernel with kvm-amd), where libkrun boots its guests for real. scripts/test.sh calls it.
#
#   scripts/test-krun.sh RESULTS_FILE
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
results=${1:-/dev/null}

# TEST_BINARY [FILTER...]: one KVM host for the whole binary.
in_kvm_host() {
  local bin=$1; shift
  local exe; exe=$(test_binary "$bin")
  [ -n "$exe" ] || { echo "test-krun: no test binary $bin" >&2; exit 1; }
  printf '\n== libkrun in a KVM host: %s %s\n' "$bin" "$*" >&2
  KRUNBOX_TEST_BACKEND=krun KRUNBOX_REQUIRE_E2E=1 \
    cargo xtask kvm-host --timeout 1800 -- "$exe" --test-threads=1 "$@" 2>&1 | tee -a "$results"
  return "${PIPESTATUS[0]}"
}

# Every e2e binary that is not specific to one backend; not here: guest_agent_boot.rs (boots
# guest-init under QEMU directly, without a backend) and krun_dry_run.rs (libkrun configured
# but never entered: the host-side checks for hosts without a usable KVM).
in_kvm_host run
in_kvm_host sandbox
in_kvm_host network
in_kvm_host ssh_agent
in_kvm_host images
in_kvm_host own_kernel
# krunbox-oci driven by hand (the KVM host has no podman or containerd: those run on QEMU).
in_kvm_host oci krunbox_oci_takes_a_bundle
# The adversarial suite's guest-side attacks (the agent, console, cp, DNS and virtio-fs
# modules). Its image and neighbour attacks are against krunbox's host side (pull, store,
# runtime and data directories), which does not depend on the backend: they run once, above.
in_kvm_host adversarial agent:: console:: cp:: dns:: virtiofs::
