//! krunbox: the host binary.
//!
//! Not built yet: the VM backends (libkrun and QEMU) and `krunbox run` are issue 3. What
//! exists today is the foundation they stand on: the `krunbox-protocol` crate (wire protocol and
//! client) and `guest-init` (the agent), which `cargo xtask bench` and the tests drive over a
//! Unix socket without a VM.

fn main() {
    eprintln!(
        "krunbox {}: booting micro-VMs is not implemented yet (the libkrun and QEMU backends are \
         the next milestone). The guest agent and the protocol client work; see README.md.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
