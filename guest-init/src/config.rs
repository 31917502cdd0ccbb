//! The agent's configuration, read from the kernel command line (`/proc/cmdline`).
//!
//! The command line is the one channel every backend can fill without touching the image:
//! QEMU's `-append`, and libkrun, which appends `krun_set_exec`'s environment words wrapped in
//! double quotes (so `"krunbox.port=1024"` is accepted too). Keys:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `krunbox.port=N` | vsock port the agent listens on | 1024 |
//! | `krunbox.hostname=NAME` | hostname | `krunbox` |
//! | `krunbox.root=virtiofs:TAG` | we run from an initramfs: mount TAG and switch into it | already on the root |
//! | `krunbox.mounts=TAG:/path[:ro],...` | further virtio-fs shares to mount | none |
//! | `krunbox.log=LEVEL` | log level (error, warn, info, debug, trace) | info |
//! | `krunbox.vmm=libkrun` | the VMM is libkrun: report the exit status to it before powering off | another VMM |
//! | `krunbox.overlay=tmpfs` | the root share is read-only: mount it as the lower layer of an overlayfs whose writable layer is a guest tmpfs | the root share is mounted as it is |
//! | `krunbox.net=ADDR/PREFIX,GATEWAY,DNS` | configure the first network interface statically (IPv4): address, default route, resolver (see network.rs) | no network but loopback |
//! | `krunbox.ssh_agent=PORT` | forward the host's SSH agent: listen on `/run/krunbox/ssh-agent.sock`, relay each connection to vsock PORT of the host, set `SSH_AUTH_SOCK` for every exec | no agent |
//!
//! Unknown `krunbox.*` keys are logged and ignored, so an older agent boots with a newer host.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use krunbox_protocol::AGENT_VSOCK_PORT;

/// A virtio-fs share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// virtio-fs tag.
    pub tag: String,
    /// Mount point in the guest.
    pub path: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

/// Where the writable layer of an overlay root lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayUpper {
    /// A tmpfs in guest memory: writes last as long as the VM and count against its memory.
    Tmpfs,
}

/// The static IPv4 configuration of the guest's network interface (`krunbox.net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The interface's address.
    pub address: Ipv4Addr,
    /// Its prefix length (24 for a /24); the gateway lies inside this subnet.
    pub prefix_len: u8,
    /// Where the default route goes.
    pub gateway: Ipv4Addr,
    /// The DNS server written to the guest's resolv.conf.
    pub dns: Ipv4Addr,
}

impl Network {
    /// The netmask of `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }
}

fn prefix_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// A decimal number without sign or leading zeros (`u8::from_str` takes `+24` and `024`).
fn parse_prefix_len(text: &str) -> Option<u8> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse().ok())
        .flatten()
        .filter(|len| *len <= 32)
}

/// Parses `ADDR/PREFIX,GATEWAY,DNS` strictly: three fields, dotted-quad addresses, a prefix
/// of 1 to 30 bits, and a gateway inside the subnet; neither address may be the subnet's
/// network or broadcast address, nor may they be equal. A configuration the kernel would
/// refuse later (a default route through a gateway off the link) is refused here, where the
/// log names the key.
fn parse_network(spec: &str) -> Option<Network> {
    let mut fields = spec.split(',');
    let (cidr, gateway, dns) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let (address, prefix_len) = cidr.split_once('/')?;
    let network = Network {
        address: address.parse().ok()?,
        prefix_len: parse_prefix_len(prefix_len).filter(|len| (1..=30).contains(len))?,
        gateway: gateway.parse().ok()?,
        dns: dns.parse().ok()?,
    };
    let mask = prefix_mask(network.prefix_len);
    let subnet = u32::from(network.address) & mask;
    let gateway = u32::from(network.gateway);
    let usable = |ip: u32| ip & mask == subnet && ip != subnet && ip != subnet | !mask;
    (usable(u32::from(network.address)) && usable(gateway) && network.gateway != network.address)
        .then_some(network)
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// vsock port to listen on.
    pub port: u32,
    /// Guest hostname.
    pub hostname: String,
    /// virtio-fs tag of the root to switch into, when booted from an initramfs.
    pub root_tag: Option<String>,
    /// Further shares.
    pub shares: Vec<Share>,
    /// Log filter.
    pub log: String,
    /// The VMM is libkrun, which exits with the status the guest reports through an ioctl on
    /// the virtio-fs root.
    pub libkrun: bool,
    /// Where the writable layer over a read-only root lives (`None`: the root is used as is).
    pub overlay: Option<OverlayUpper>,
    /// The static network configuration (`None`: only loopback is brought up).
    pub network: Option<Network>,
    /// The host vsock port of the host's SSH agent, to relay guest clients to.
    pub ssh_agent_port: Option<u32>,
    /// Keys that were not understood (logged once logging is up).
    pub ignored: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: AGENT_VSOCK_PORT,
            hostname: "krunbox".into(),
            root_tag: None,
            shares: Vec::new(),
            log: "info".into(),
            libkrun: false,
            overlay: None,
            network: None,
            ssh_agent_port: None,
            ignored: Vec::new(),
        }
    }
}

/// Splits a command line into words, honouring double quotes (which group and are removed).
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(current);
    }
    out
}

fn parse_share(spec: &str) -> Option<Share> {
    let mut parts = spec.split(':');
    let tag = parts.next().filter(|t| !t.is_empty())?;
    let path = parts.next().filter(|p| p.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Share {
        tag: tag.into(),
        path: path.into(),
        read_only,
    })
}

impl Config {
    /// Parses a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut config = Self::default();
        for word in words(cmdline) {
            let Some(setting) = word.strip_prefix("krunbox.") else {
                continue;
            };
            let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
            let understood = match key {
                "port" => value.parse().map(|port| config.port = port).is_ok(),
                "hostname" if !value.is_empty() => {
                    config.hostname = value.into();
                    true
                }
                "root" => match value.strip_prefix("virtiofs:") {
                    Some(tag) if !tag.is_empty() => {
                        config.root_tag = Some(tag.into());
                        true
                    }
                    _ => false,
                },
                "mounts" => {
                    let shares: Option<Vec<_>> = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(parse_share)
                        .collect();
                    shares.map(|shares| config.shares = shares).is_some()
                }
                "log" if !value.is_empty() => {
                    config.log = value.into();
                    true
                }
                "vmm" if value == "libkrun" => {
                    config.libkrun = true;
                    true
                }
                "overlay" => match value {
                    "tmpfs" => {
                        config.overlay = Some(OverlayUpper::Tmpfs);
                        true
                    }
                    _ => false,
                },
                "net" => parse_network(value)
                    .map(|network| config.network = Some(network))
                    .is_some(),
                "ssh_agent" => value
                    .parse()
                    .map(|port| config.ssh_agent_port = Some(port))
                    .is_ok(),
                _ => false,
            };
            if !understood {
                config.ignored.push(word);
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_ignores_the_rest() {
        let config = Config::from_cmdline(
            "console=ttyS0 quiet krunbox.port=2000 krunbox.hostname=box krunbox.root=virtiofs:rootfs \
             krunbox.mounts=work:/work,data:/data:ro krunbox.log=debug krunbox.overlay=tmpfs \
             krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.3 krunbox.ssh_agent=1025",
        );
        assert_eq!(config.port, 2000);
        assert_eq!(config.hostname, "box");
        assert_eq!(config.root_tag.as_deref(), Some("rootfs"));
        assert_eq!(
            config.shares,
            vec![
                Share {
                    tag: "work".into(),
                    path: "/work".into(),
                    read_only: false
                },
                Share {
                    tag: "data".into(),
                    path: "/data".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!(config.log, "debug");
        assert_eq!(config.overlay, Some(OverlayUpper::Tmpfs));
        assert_eq!(
            config.network,
            Some(Network {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                dns: Ipv4Addr::new(10, 0, 2, 3),
            })
        );
        assert_eq!(config.ssh_agent_port, Some(1025));
        assert!(config.ignored.is_empty());
    }

    #[test]
    fn accepts_libkrun_style_quoted_words() {
        let config = Config::from_cmdline(
            r#"reboot=k "krunbox.port=1500" "krunbox.hostname=a b" "krunbox.vmm=libkrun""#,
        );
        assert_eq!(config.port, 1500);
        assert_eq!(config.hostname, "a b");
        assert!(config.libkrun);
        assert!(
            config.root_tag.is_none(),
            "libkrun's kernel mounts the root itself"
        );
    }

    #[test]
    fn malformed_values_keep_defaults_and_are_reported() {
        let config = Config::from_cmdline(
            "krunbox.port=abc krunbox.mounts=tag:relative krunbox.root=9p:x krunbox.future=1 \
             krunbox.vmm=firecracker \
             krunbox.overlay=disk krunbox.ssh_agent=yes",
        );
        assert_eq!(
            config,
            Config {
                ignored: config.ignored.clone(),
                ..Config::default()
            }
        );
        assert_eq!(config.ignored.len(), 7);
    }

    #[test]
    fn network_netmask_follows_the_prefix() {
        let net = |prefix_len| Network {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 2),
        };
        assert_eq!(net(24).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net(1).netmask(), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(net(30).netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(net(0).netmask(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(net(32).netmask(), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn network_accepts_other_subnets_and_quoted_words() {
        let config = Config::from_cmdline(r#""krunbox.net=192.168.7.9/16,192.168.0.1,1.1.1.1""#);
        assert_eq!(
            config.network,
            Some(Network {
                address: Ipv4Addr::new(192, 168, 7, 9),
                prefix_len: 16,
                gateway: Ipv4Addr::new(192, 168, 0, 1),
                dns: Ipv4Addr::new(1, 1, 1, 1),
            })
        );
        assert!(config.ignored.is_empty());
    }

    #[test]
    fn malformed_network_settings_are_ignored_and_reported() {
        let malformed = [
            "",
            "10.0.2.15/24",
            "10.0.2.15/24,10.0.2.2",
            "10.0.2.15/24,10.0.2.2,10.0.2.2,10.0.2.3",
            "10.0.2.15,10.0.2.2,10.0.2.2",
            "10.0.2.15/,10.0.2.2,10.0.2.2",
            "10.0.2.15/+24,10.0.2.2,10.0.2.2",
            "10.0.2.15/024,10.0.2.2,10.0.2.2",
            "10.0.2.15/33,10.0.2.2,10.0.2.2",
            "10.0.2.15/0,10.0.2.2,10.0.2.2",
            "10.0.2.15/32,10.0.2.2,10.0.2.2",
            "10.0.2.15/24,10.0.3.2,10.0.2.2",
            "10.0.2.15/24,10.0.2.15,10.0.2.2",
            "10.0.2.0/24,10.0.2.2,10.0.2.2",
            "10.0.2.15/24,10.0.2.255,10.0.2.2",
            "10.0.2.15/24, 10.0.2.2,10.0.2.2",
            "10.0.2.15/24,10.0.2.2,",
            "10.0.2.15/24,10.0.2.2,dns.example",
            "10.0.2.256/24,10.0.2.2,10.0.2.2",
            "fd00::15/64,fd00::2,fd00::2",
        ];
        for spec in malformed {
            let word = format!("krunbox.net={spec}");
            let config = Config::from_cmdline(&format!("\"{word}\""));
            assert_eq!(config.network, None, "{spec:?} was accepted");
            assert_eq!(config.ignored, [word], "{spec:?} was not reported");
        }
        let config = Config::from_cmdline("krunbox.net");
        assert_eq!((config.network, config.ignored.len()), (None, 1));
    }
}
