//! What a VM's guest-init is told at boot ([`GuestBoot`], written on the kernel command line),
//! derived from the [`VmSpec`] once for both backends; each backend adds only what is its own
//! (QEMU: the root tag to switch into; libkrun: that it is the VMM).

use krunbox_protocol::boot::{GuestBoot, OverlayUpper, Share};

use super::{Network, VmSpec};

/// The virtio-fs tag of the spec's `index`-th further share (from 1): `share1`, `share2`, ….
pub fn share_tag(index: usize) -> String {
    format!("share{index}")
}

/// The settings of `spec` common to every backend.
pub fn guest_boot(spec: &VmSpec) -> GuestBoot {
    GuestBoot {
        port: krunbox_protocol::AGENT_VSOCK_PORT,
        hostname: spec.hostname.clone(),
        // A shared store image: read-only at the device, and guest-init stacks a tmpfs
        // overlay on it before anything runs.
        overlay: spec.root_overlay.then_some(OverlayUpper::Tmpfs),
        shares: spec
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| Share {
                tag: share_tag(i + 1),
                path: s.guest_path.clone().into(),
                read_only: s.read_only,
            })
            .collect(),
        log: spec
            .guest_log_level
            .clone()
            .unwrap_or_else(|| krunbox_protocol::boot::DEFAULT_LOG.into()),
        ssh_agent_port: spec
            .ssh_agent
            .as_ref()
            .map(|_| krunbox_protocol::SSH_AGENT_VSOCK_PORT),
        network: matches!(spec.network, Network::User(_)).then(super::net::guest_network),
        ca_bundle: spec.ca_bundle.clone().map(Into::into),
        trust_port: secrets(spec)
            .is_some()
            .then_some(krunbox_net::secrets::TRUST_PORT),
        secrets: secrets(spec)
            .map(|secrets| secrets.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default(),
        ..GuestBoot::default()
    }
}

/// The network's secrets, if it has any.
fn secrets(spec: &VmSpec) -> Option<&[krunbox_net::secrets::Secret]> {
    match &spec.network {
        Network::User(network) if !network.config.secrets.is_empty() => {
            Some(&network.config.secrets)
        }
        _ => None,
    }
}
