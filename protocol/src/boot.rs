//! The guest's boot settings: what the host tells guest-init before any connection exists.
//!
//! They travel on the kernel command line, the one channel every backend can fill without
//! touching the image: QEMU's `-append`, and libkrun, which appends `krun_set_exec`'s
//! environment words wrapped in double quotes (so `"krunbox.port=1024"` is read too). The host
//! builds a [`GuestBoot`] and writes it with [`GuestBoot::to_words`]; guest-init reads it back
//! with [`GuestBoot::parse`]. Keys:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `krunbox.port=N` | vsock port the agent listens on | 1024 |
//! | `krunbox.hostname=NAME` | hostname | `krunbox` |
//! | `krunbox.root=virtiofs:TAG` | we run from an initramfs: mount TAG and switch into it | already on the root |
//! | `krunbox.overlay=tmpfs` | the root share is read-only: mount it as the lower layer of an overlayfs whose writable layer is a guest tmpfs | the root share is mounted as it is |
//! | `krunbox.mounts=TAG:/path[:ro],...` | further virtio-fs shares to mount | none |
//! | `krunbox.log=LEVEL` | log level (error, warn, info, debug, trace) | info |
//! | `krunbox.ssh_agent=PORT` | forward the host's SSH agent: listen on `/run/krunbox/ssh-agent.sock`, relay each connection to vsock PORT of the host, set `SSH_AUTH_SOCK` for every exec | no agent |
//! | `krunbox.net=ADDR/PREFIX,GATEWAY,DNS` | configure the first network interface statically (IPv4): address, default route, resolver | no network but loopback |
//! | `krunbox.vmm=libkrun` | the VMM is libkrun: report the exit status to it before powering off | another VMM |
//! | `krunbox.ca=/PATH` | a CA bundle to trust (`--host-ca`): every exec gets [`CA_BUNDLE_ENV`] pointing at it | the image's own trust |
//! | `krunbox.trust=PORT` | at boot, fetch the sandbox's CA certificate (PEM) from the gateway's TCP PORT and trust it besides the `krunbox.ca` bundle (or the image's own): every exec gets [`CA_BUNDLE_ENV`] pointing at the joined bundle | nothing more is trusted |
//! | `krunbox.secrets=NAME,...` | every exec gets each NAME set to its [`secret_placeholder`] (`--secret`: the gateway puts the real value in its place) | none |
//!
//! Unknown `krunbox.*` keys are kept in [`Parsed::ignored`] (guest-init logs them), so an
//! older agent boots with a newer host.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::AGENT_VSOCK_PORT;

/// The variables every exec gets set to the `krunbox.ca` bundle (unless its request sets
/// them): OpenSSL and what links it (curl, Python's ssl, Ruby, git over HTTPS), Node.js
/// (added to its built-in roots), Python's requests, curl and git.
pub const CA_BUNDLE_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// What the guest sees in place of the secret `name` (`--secret NAME@HOST`): the gateway
/// replaces it by the value in requests to the secret's hosts. Fixed, not random: it stands
/// for the value and tells nothing about it. No placeholder is a prefix of another (a name
/// has no `-`, and `-placeholder` ends each).
pub fn secret_placeholder(name: &str) -> String {
    format!("krunbox-secret-{name}-placeholder")
}

/// Whether `name` can be a secret's variable: a shell variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// guest-init's log filter when the host sets none.
pub const DEFAULT_LOG: &str = "info";

/// The hostname when the host sets none.
pub const DEFAULT_HOSTNAME: &str = "krunbox";

/// The kernel's own words on a QEMU guest's command line, before guest-init's: serial
/// console, the initramfs's init, no reboot on panic (QEMU exits), and `no_timer_check` (as
/// Kata's and cloud images' VMs boot: under TCG on a busy host, the kernel's check that the
/// timer reaches the IO-APIC runs too slowly to see its interrupts and reports "MP-BIOS bug:
/// 8254 timer not connected to IO-APIC", then reroutes the timer; the check has nothing to
/// find on QEMU's q35). The boot bench's raw-QEMU floor boots with the same words.
pub const QEMU_KERNEL_WORDS: [&str; 5] = [
    "console=ttyS0",
    "rdinit=/init",
    "panic=-1",
    "quiet",
    "no_timer_check",
];

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

/// What the host tells guest-init at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBoot {
    /// vsock port to listen on.
    pub port: u32,
    /// Guest hostname.
    pub hostname: String,
    /// virtio-fs tag of the root to switch into, when booted from an initramfs (libkrun's
    /// kernel mounts its root itself).
    pub root_tag: Option<String>,
    /// Where the writable layer over a read-only root lives (`None`: the root is used as is).
    pub overlay: Option<OverlayUpper>,
    /// Further shares.
    pub shares: Vec<Share>,
    /// Log filter.
    pub log: String,
    /// The host vsock port of the host's SSH agent, to relay guest clients to.
    pub ssh_agent_port: Option<u32>,
    /// The static network configuration (`None`: only loopback is brought up).
    pub network: Option<Network>,
    /// The VMM is libkrun, which exits with the status the guest reports through an ioctl on
    /// the virtio-fs root.
    pub libkrun: bool,
    /// A CA bundle in the guest for every exec to trust ([`CA_BUNDLE_ENV`]).
    pub ca_bundle: Option<PathBuf>,
    /// The gateway's TCP port that serves the sandbox's CA certificate, to trust as well.
    pub trust_port: Option<u16>,
    /// Secrets' variable names: every exec gets each set to its [`secret_placeholder`].
    pub secrets: Vec<String>,
}

impl Default for GuestBoot {
    fn default() -> Self {
        Self {
            port: AGENT_VSOCK_PORT,
            hostname: DEFAULT_HOSTNAME.into(),
            root_tag: None,
            overlay: None,
            shares: Vec::new(),
            log: DEFAULT_LOG.into(),
            ssh_agent_port: None,
            network: None,
            libkrun: false,
            ca_bundle: None,
            trust_port: None,
            secrets: Vec::new(),
        }
    }
}

/// A command line read by [`GuestBoot::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The settings understood (defaults for the rest).
    pub boot: GuestBoot,
    /// `krunbox.*` words that were not understood, as they were written.
    pub ignored: Vec<String>,
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

impl GuestBoot {
    /// The `krunbox.*` words of these settings, each `krunbox.KEY=VALUE` unquoted (a backend
    /// that writes a command line quotes them: [`quote_word`]); settings at their default are
    /// left out, except the port and hostname, which are always written.
    pub fn to_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(tag) = &self.root_tag {
            words.push(format!("krunbox.root=virtiofs:{tag}"));
        }
        words.push(format!("krunbox.hostname={}", self.hostname));
        words.push(format!("krunbox.port={}", self.port));
        if let Some(OverlayUpper::Tmpfs) = self.overlay {
            words.push("krunbox.overlay=tmpfs".into());
        }
        if !self.shares.is_empty() {
            let mounts: Vec<String> = self
                .shares
                .iter()
                .map(|s| {
                    let ro = if s.read_only { ":ro" } else { "" };
                    format!("{}:{}{ro}", s.tag, s.path.display())
                })
                .collect();
            words.push(format!("krunbox.mounts={}", mounts.join(",")));
        }
        if self.log != DEFAULT_LOG {
            words.push(format!("krunbox.log={}", self.log));
        }
        if let Some(port) = self.ssh_agent_port {
            words.push(format!("krunbox.ssh_agent={port}"));
        }
        if let Some(net) = &self.network {
            words.push(format!(
                "krunbox.net={}/{},{},{}",
                net.address, net.prefix_len, net.gateway, net.dns
            ));
        }
        if self.libkrun {
            words.push("krunbox.vmm=libkrun".into());
        }
        if let Some(bundle) = &self.ca_bundle {
            words.push(format!("krunbox.ca={}", bundle.display()));
        }
        if let Some(port) = self.trust_port {
            words.push(format!("krunbox.trust={port}"));
        }
        if !self.secrets.is_empty() {
            words.push(format!("krunbox.secrets={}", self.secrets.join(",")));
        }
        words
    }

    /// Parses a kernel command line; words other than `krunbox.*` are skipped.
    pub fn parse(cmdline: &str) -> Parsed {
        let mut config = Self::default();
        let mut ignored = Vec::new();
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
                "ca" if value.starts_with('/') && !value.contains(['"', ',']) => {
                    config.ca_bundle = Some(value.into());
                    true
                }
                "trust" => value
                    .parse()
                    .map(|port| config.trust_port = Some(port))
                    .is_ok(),
                "secrets" => {
                    let names: Vec<String> = value.split(',').map(str::to_owned).collect();
                    let valid = names.iter().all(|name| is_secret_name(name));
                    if valid {
                        config.secrets = names;
                    }
                    valid
                }
                _ => false,
            };
            if !understood {
                ignored.push(word);
            }
        }
        Parsed {
            boot: config,
            ignored,
        }
    }
}

/// `word` as one word of a kernel command line: in double quotes if it has whitespace (the
/// kernel and [`GuestBoot::parse`] both group quoted words and drop the quotes).
pub fn quote_word(word: &str) -> String {
    if word.contains(char::is_whitespace) {
        format!("\"{word}\"")
    } else {
        word.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cmdline: &str) -> (GuestBoot, Vec<String>) {
        let parsed = GuestBoot::parse(cmdline);
        (parsed.boot, parsed.ignored)
    }

    /// Every setting away from its default, as the host writes it.
    fn everything() -> GuestBoot {
        GuestBoot {
            port: 2000,
            hostname: "box".into(),
            root_tag: Some("rootfs".into()),
            overlay: Some(OverlayUpper::Tmpfs),
            shares: vec![
                Share {
                    tag: "share1".into(),
                    path: "/work".into(),
                    read_only: false,
                },
                Share {
                    tag: "share2".into(),
                    path: "/data".into(),
                    read_only: true,
                },
            ],
            log: "debug".into(),
            ssh_agent_port: Some(1025),
            network: Some(Network {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                dns: Ipv4Addr::new(10, 0, 2, 2),
            }),
            libkrun: true,
            ca_bundle: Some("/run/krunbox/host-ca/ca-certificates.crt".into()),
            trust_port: Some(4),
            secrets: vec!["API_KEY".into(), "_other2".into()],
        }
    }

    #[test]
    fn what_the_host_writes_the_guest_reads_back() {
        for boot in [GuestBoot::default(), everything()] {
            // As QEMU's -append carries them (quoted where needed) and as libkrun does (every
            // word in double quotes).
            let plain: Vec<String> = boot.to_words().iter().map(|w| quote_word(w)).collect();
            let libkrun: Vec<String> = boot.to_words().iter().map(|w| format!("\"{w}\"")).collect();
            for cmdline in [plain.join(" "), libkrun.join(" ")] {
                let (read_back, ignored) = read(&format!("console=ttyS0 quiet {cmdline}"));
                assert_eq!(read_back, boot, "{cmdline}");
                assert!(ignored.is_empty(), "{ignored:?}");
            }
        }
        let spaced = GuestBoot {
            hostname: "a b".into(),
            ..GuestBoot::default()
        };
        let cmdline: Vec<String> = spaced.to_words().iter().map(|w| quote_word(w)).collect();
        assert_eq!(read(&cmdline.join(" ")).0, spaced);
    }

    #[test]
    fn defaults_are_left_out_but_port_and_hostname() {
        assert_eq!(
            GuestBoot::default().to_words(),
            ["krunbox.hostname=krunbox", "krunbox.port=1024"]
        );
    }

    #[test]
    fn reads_every_key_and_ignores_the_rest() {
        let (config, ignored) = read(
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
        assert!(ignored.is_empty());
    }

    #[test]
    fn secret_names_are_variable_names_or_the_word_is_ignored() {
        let (config, ignored) =
            read("krunbox.secrets=A_KEY,b2 krunbox.secrets=A,$(x) krunbox.secrets=");
        assert_eq!(config.secrets, ["A_KEY", "b2"]);
        assert_eq!(ignored, ["krunbox.secrets=A,$(x)", "krunbox.secrets="]);
        assert!(!is_secret_name("2KEY") && !is_secret_name("A-B") && is_secret_name("_"));
        assert_ne!(secret_placeholder("A"), secret_placeholder("B"));
        assert!(!secret_placeholder("KEY_2").starts_with(&secret_placeholder("KEY")));
    }

    #[test]
    fn accepts_libkrun_style_quoted_words() {
        let (config, ignored) =
            read(r#"reboot=k "krunbox.port=1500" "krunbox.hostname=a b" "krunbox.vmm=libkrun""#);
        assert_eq!(config.port, 1500);
        assert_eq!(config.hostname, "a b");
        assert!(config.libkrun);
        assert!(
            config.root_tag.is_none(),
            "libkrun's kernel mounts the root itself"
        );
        assert!(ignored.is_empty(), "{ignored:?}");
    }

    #[test]
    fn malformed_values_keep_defaults_and_are_reported() {
        let (config, ignored) = read(
            "krunbox.port=abc krunbox.mounts=tag:relative krunbox.root=9p:x krunbox.future=1 \
             krunbox.vmm=firecracker \
             krunbox.overlay=disk krunbox.ssh_agent=yes",
        );
        assert_eq!(config, GuestBoot::default());
        assert_eq!(ignored.len(), 7);
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
        let (config, ignored) = read(r#""krunbox.net=192.168.7.9/16,192.168.0.1,1.1.1.1""#);
        assert_eq!(
            config.network,
            Some(Network {
                address: Ipv4Addr::new(192, 168, 7, 9),
                prefix_len: 16,
                gateway: Ipv4Addr::new(192, 168, 0, 1),
                dns: Ipv4Addr::new(1, 1, 1, 1),
            })
        );
        assert!(ignored.is_empty());
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
            let (config, ignored) = read(&format!("\"{word}\""));
            assert_eq!(config.network, None, "{spec:?} was accepted");
            assert_eq!(ignored, [word], "{spec:?} was not reported");
        }
        let (config, ignored) = read("krunbox.net");
        assert_eq!((config.network, ignored.len()), (None, 1));
    }
}
