#!/usr/bin/env bash
# Installs everything krunbox needs on Debian/Ubuntu, builds it, its guest kernel and the
# built-in default image, then runs a command in a micro-VM.
#
#   ./scripts/setup.sh            install + build + `krunbox run -- uname -a`
#   ./scripts/setup.sh --no-demo  install + build only (used by scripts/test.sh)
#
# Idempotent: a second run only checks what is already there.
set -euo pipefail

demo=1
[ "${1:-}" = "--no-demo" ] && demo=0
cd "$(dirname "$0")/.."
log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian/Ubuntu packages -------------------------------------------------------------
packages=(qemu-system-x86 qemu-system-common busybox-static cpio docker-registry skopeo
          iproute2 kmod xz-utils zstd ca-certificates curl gcc libc6-dev pkg-config
          # the Rust virtiofsd (built below with cargo)
          libseccomp-dev libcap-ng-dev
          # the --ssh end-to-end test (ssh-agent, ssh-add, ssh-keygen)
          openssh-client
          # engines that run krunbox-oci in the tests (podman with its conmon; containerd, ctr)
          podman containerd
          # gVisor, the boot benchmark's neighbour row (podman --runtime runsc)
          runsc
          # `cargo xtask build-kernel` (krunbox's own guest kernel from linux-source-*)
          make flex bison bc libelf-dev perl)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done

. /etc/os-release
want_krunfw=0
dpkg-query -W -f='${Status}' libkrunfw5 2>/dev/null | grep -q "ok installed" || want_krunfw=1
if [ "$want_krunfw" = 1 ] && [ "${ID:-}" = debian ] && [ ! -e /etc/apt/preferences.d/krunbox ]; then
  # libkrunfw5 (libkrun's default guest kernel) exists only in Debian's unstable suite.
  # The pin keeps everything else on the stable release.
  # The unstable suite comes from the mirror this machine already uses for Debian itself.
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { print $2; exit }')
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt to take libkrunfw5 from"; exit 1; }
  log "adding Debian unstable from $mirror, pinned to libkrunfw only"
  sudo_if_needed tee /etc/apt/sources.list.d/krunbox-sid.sources >/dev/null <<SOURCES
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  sudo_if_needed tee /etc/apt/preferences.d/krunbox >/dev/null <<'PIN'
Package: *
Pin: release n=sid
Pin-Priority: 50

Package: libkrunfw5 libkrunfw-dev
Pin: release n=sid
Pin-Priority: 500
PIN
fi
if [ "${#missing[@]}" -gt 0 ] || [ "$want_krunfw" = 1 ]; then
  log "installing ${missing[*]} ${want_krunfw:+libkrunfw5}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ "$want_krunfw" = 1 ]; then
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libkrunfw5 \
      || log "libkrunfw5 not available here: the krun backend will be unavailable, the qemu backend works"
  fi
fi

# --- Rust toolchain, targets and tools --------------------------------------------------
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || { log "installing rustup"; curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }
  export PATH="$HOME/.cargo/bin:$PATH"
fi
export PATH="$HOME/.cargo/bin:$PATH"
installed_targets=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl aarch64-apple-darwin; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
# Host helpers krunbox runs (Rust crates). Installed as root into /usr/local, so krunbox works
# the same for every local user; as a normal user into ~/.cargo/bin.
helper_tool() { # NAME VERSION WHY
  local name=$1 version=$2
  if [ "$(id -u)" -eq 0 ]; then
    [ -x "/usr/local/bin/$name" ] && return
    if [ -x "$HOME/.cargo/bin/$name" ] && "$HOME/.cargo/bin/$name" --version 2>/dev/null | grep -q "$version"; then
      install -m 0755 "$HOME/.cargo/bin/$name" "/usr/local/bin/$name"; return
    fi
    log "building $name $version ($3)"; cargo install --locked --root /usr/local "$name" --version "$version"
  else
    command -v "$name" >/dev/null && return
    log "building $name $version ($3)"; cargo install --locked "$name" --version "$version"
  fi
}
helper_tool vhost-device-vsock 0.3.0 "the QEMU backend's vsock; about 2 minutes"
# The Rust virtiofsd: read-only shares and id mapping enforced at the host (QEMU's C one in
# qemu-system-common has neither); Debian's own package needs a newer libc than bookworm's.
helper_tool virtiofsd 1.14.0 "the QEMU backend's shared directories; about 3 minutes"
command -v cargo-fuzz >/dev/null || { log "building cargo-fuzz"; cargo install --locked cargo-fuzz --version 0.13.2; }

# --- krunbox, its guest agent, kernel and default image ---------------------------------
log "building krunbox and guest-init (x86_64 and aarch64, static musl)"
# The test run (--no-demo) uses the debug build its tests run anyway: a release build with LTO
# would cost minutes more on a cold machine.
if [ "$demo" = 1 ]; then
  cargo build --release -p krunbox
  krunbox=./target/release/krunbox
else
  cargo build -p krunbox
  krunbox=./target/debug/krunbox
fi
cargo xtask build-init
if [ ! -f target/rootfs/default/index.json ]; then
  log "building the default image (busybox-static, OCI layout in target/rootfs/default)"
  cargo xtask build-rootfs
fi

# krunbox's own guest kernel, the QEMU backend's default: built once from Debian's
# linux-source (about half an hour on 2 cores; cached in .krunbox-cache/), then installed for
# the user running this script.
log "krunbox's guest kernel (cargo xtask build-kernel; cached after the first build)"
cargo xtask build-kernel
"$krunbox" kernel install "${KRUNBOX_CACHE_DIR:-.krunbox-cache}/kernel/x86_64"

if [ "$demo" = 1 ]; then
  log "running: krunbox run -- uname -a   (built-in default image; QEMU backend here)"
  "$krunbox" run -- uname -a
fi
