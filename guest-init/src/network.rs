//! The guest's network interface, configured statically from `krunbox.net`.
//!
//! The host's user-mode network stack sits at the other end of a virtio-net device; the
//! command line says which address, gateway and DNS server to use (no DHCP: the host decides,
//! and a lease exchange would only add to boot time). Steps, each logged when it fails:
//!
//! 1. wait (up to [`INTERFACE_WAIT`]) for the first interface backed by a device, in ifindex
//!    order (`eth0` in practice): virtio_net may still be probing after its module loaded;
//! 2. set its address and netmask, bring it up, add the default route via the gateway;
//! 3. write `/run/krunbox/resolv.conf` and bind-mount it over `/etc/resolv.conf`, so the
//!    image's own file is shadowed, not changed (a read-only root works as well).
//!
//! The interface is set up with the classic ioctls (`SIOCSIFADDR`, `SIOCSIFNETMASK`,
//! `SIOCSIFFLAGS`, `SIOCADDRT`) on an `AF_INET` datagram socket, as [`crate::system::loopback_up`]
//! does, rather than with rtnetlink: four fixed requests need no message building, no new
//! dependency (the rtnetlink crates bring an async netlink stack for the same four messages)
//! and are as old as Linux itself. They are IPv4-only; IPv6 would be the time for netlink.
//!
//! Nothing here may stop the boot: a guest without network still runs commands.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use krunbox_protocol::boot::Network;

/// How long to wait for the interface to appear.
pub const INTERFACE_WAIT: Duration = Duration::from_secs(2);

/// Where network interfaces are listed.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// The resolver configuration guest-init writes (on the /run tmpfs).
const OUR_RESOLV_CONF: &str = "/run/krunbox/resolv.conf";

/// The file resolvers read, which ours is mounted over.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Why the interface could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No interface but loopback appeared.
    #[error("no network interface appeared in {SYS_CLASS_NET} within {0:?} (is virtio-net attached and its driver loaded?)")]
    NoInterface(Duration),
    /// The interface name does not fit an `ifreq`.
    #[error("interface name {0:?} is too long")]
    Name(String),
    /// No socket to send the ioctls on.
    #[error("no socket to configure {interface}: {errno}")]
    Socket {
        /// The interface.
        interface: String,
        /// The error.
        errno: Errno,
    },
    /// The kernel refused a request.
    #[error("{request} on {interface}: {source}")]
    Ioctl {
        /// The ioctl, by name.
        request: &'static str,
        /// The interface.
        interface: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Why the DNS server could not be made the guest's resolver.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// Writing our resolv.conf failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The image has no resolv.conf and one cannot be created (a read-only root).
    #[error("create {path} to mount the resolver configuration on: {source}")]
    MountPoint {
        /// The file that was to be created.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bind mount failed.
    #[error("bind-mount {source_path} on {target}: {errno}")]
    Mount {
        /// Our file.
        source_path: PathBuf,
        /// The image's file.
        target: PathBuf,
        /// The error.
        errno: Errno,
    },
}

/// Configures the interface and the resolver; logs what failed and returns either way.
pub fn configure(network: &Network) {
    let interface = match wait_for_interface(Path::new(SYS_CLASS_NET), INTERFACE_WAIT) {
        Ok(interface) => interface,
        Err(err) => {
            tracing::error!(%err, "network not configured");
            return;
        }
    };
    if let Err(err) = configure_interface(&interface, network) {
        tracing::error!(%err, "network not configured");
        return;
    }
    match set_resolver(network.dns) {
        Ok(()) => tracing::info!(
            interface,
            address = %network.address,
            prefix_len = network.prefix_len,
            gateway = %network.gateway,
            dns = %network.dns,
            "network configured"
        ),
        Err(err) => tracing::warn!(
            %err,
            interface,
            address = %network.address,
            "network configured, but the DNS server is not the guest's resolver"
        ),
    }
}

/// Polls [`first_interface`] until one appears or `limit` passes.
fn wait_for_interface(sys_class_net: &Path, limit: Duration) -> Result<String, NetworkError> {
    let start = Instant::now();
    loop {
        if let Some(interface) = first_interface(sys_class_net) {
            tracing::debug!(interface, waited = ?start.elapsed(), "network interface found");
            return Ok(interface);
        }
        if start.elapsed() >= limit {
            return Err(NetworkError::NoInterface(limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interface with the lowest ifindex that is backed by a device (it has a `device`
/// link in sysfs): neither loopback nor a virtual interface a kernel may create by itself
/// (`sit0`, `tunl0`, ...).
fn first_interface(sys_class_net: &Path) -> Option<String> {
    std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("device").exists())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index: u32 = std::fs::read_to_string(entry.path().join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((index, name))
        })
        .min()
        .map(|(_, name)| name)
}

/// An `AF_INET` socket address as the generic `sockaddr` the ioctl structures hold.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data C structures; the
    // kernel reads the former's layout out of the latter for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// The ioctl socket and interface name.
struct Interface {
    name: String,
    socket: OwnedFd,
}

impl Interface {
    fn open(name: &str) -> Result<Self, NetworkError> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(NetworkError::Name(name.into()));
        }
        let socket = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|errno| NetworkError::Socket {
            interface: name.into(),
            errno,
        })?;
        Ok(Self {
            name: name.into(),
            socket,
        })
    }

    /// An `ifreq` naming this interface.
    fn request(&self) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // The name is shorter than IFNAMSIZ (checked in open), so a NUL stays at the end.
        for (dst, src) in req.ifr_name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn ioctl<T>(
        &self,
        request: libc::c_ulong,
        name: &'static str,
        arg: &mut T,
    ) -> Result<(), NetworkError> {
        // SAFETY: every request used here takes a pointer to the structure type passed with
        // it (ifreq or rtentry), which outlives the call.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), request as _, arg as *mut T) };
        if rc == 0 {
            Ok(())
        } else {
            Err(NetworkError::Ioctl {
                request: name,
                interface: self.name.clone(),
                source: std::io::Error::last_os_error(),
            })
        }
    }
}

/// Sets the address and netmask, brings the interface up and routes everything else through
/// the gateway (the order `ifconfig` and `route` use: the subnet route appears when the
/// interface comes up, and the gateway must be reachable through it).
fn configure_interface(name: &str, network: &Network) -> Result<(), NetworkError> {
    let interface = Interface::open(name)?;

    let mut req = interface.request();
    req.ifr_ifru.ifru_addr = sockaddr(network.address);
    interface.ioctl(libc::SIOCSIFADDR, "SIOCSIFADDR", &mut req)?;

    let mut req = interface.request();
    req.ifr_ifru.ifru_netmask = sockaddr(network.netmask());
    interface.ioctl(libc::SIOCSIFNETMASK, "SIOCSIFNETMASK", &mut req)?;

    let mut req = interface.request();
    interface.ioctl(libc::SIOCGIFFLAGS, "SIOCGIFFLAGS", &mut req)?;
    // SAFETY: reading the flags member of the union SIOCGIFFLAGS just filled.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    interface.ioctl(libc::SIOCSIFFLAGS, "SIOCSIFFLAGS", &mut req)?;

    let device = CString::new(name).map_err(|_| NetworkError::Name(name.into()))?;
    // SAFETY: rtentry is plain old data; zeroed is a valid value (null rt_dev included).
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(network.gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // The kernel only reads the name (SIOCADDRT copies it in); `device` outlives the call.
    route.rt_dev = device.as_ptr().cast_mut();
    match interface.ioctl(libc::SIOCADDRT, "SIOCADDRT", &mut route) {
        Err(NetworkError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            tracing::debug!(interface = name, "a default route is already there");
            Ok(())
        }
        other => other,
    }
}

/// Makes `dns` the guest's only DNS server.
fn set_resolver(dns: Ipv4Addr) -> Result<(), ResolverError> {
    let (ours, target) = (Path::new(OUR_RESOLV_CONF), Path::new(RESOLV_CONF));
    prepare_resolver(dns, ours, target)?;
    mount(
        Some(ours),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| ResolverError::Mount {
        source_path: ours.into(),
        target: target.into(),
        errno,
    })
}

/// Writes `ours` and makes sure `target` exists to be mounted on. A missing target is
/// created (on a read-only root, that is the error); a dangling symlink (often to a file of
/// systemd-resolved under /run, a fresh tmpfs here) gets its destination created, since
/// mount(2) follows the link.
fn prepare_resolver(dns: Ipv4Addr, ours: &Path, target: &Path) -> Result<(), ResolverError> {
    let write_error = |source| ResolverError::Write {
        path: ours.into(),
        source,
    };
    if let Some(dir) = ours.parent() {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    std::fs::write(ours, format!("nameserver {dns}\n")).map_err(write_error)?;
    if target.exists() {
        return Ok(());
    }
    let file = match std::fs::read_link(target) {
        // The link's destination is relative to the link's directory.
        Ok(destination) => target
            .parent()
            .map_or(destination.clone(), |dir| dir.join(&destination)),
        Err(_) => target.to_owned(),
    };
    let create = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .map(drop)
    };
    create().map_err(|source| ResolverError::MountPoint { path: file, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_interface(sys: &Path, name: &str, index: u32, device: bool) {
        let dir = sys.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
        if device {
            std::fs::create_dir(dir.join("device")).unwrap();
        }
    }

    #[test]
    fn the_first_interface_is_the_lowest_index_with_a_device() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(first_interface(sys.path()), None);
        fake_interface(sys.path(), "lo", 1, false);
        fake_interface(sys.path(), "sit0", 2, false);
        assert_eq!(first_interface(sys.path()), None);
        fake_interface(sys.path(), "eth1", 4, true);
        fake_interface(sys.path(), "eth0", 3, true);
        assert_eq!(first_interface(sys.path()).as_deref(), Some("eth0"));
    }

    #[test]
    fn waiting_for_an_interface_gives_up_after_the_limit() {
        let sys = tempfile::tempdir().unwrap();
        fake_interface(sys.path(), "lo", 1, false);
        let start = Instant::now();
        let err = wait_for_interface(sys.path(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, NetworkError::NoInterface(_)), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn waiting_finds_an_interface_that_appears_late() {
        let sys = tempfile::tempdir().unwrap();
        let path = sys.path().to_owned();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fake_interface(&path, "eth0", 2, true);
        });
        let found = wait_for_interface(sys.path(), Duration::from_secs(5)).unwrap();
        late.join().unwrap();
        assert_eq!(found, "eth0");
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let raw = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = raw.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(bytes[..6], [0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn the_resolver_file_is_written_and_a_missing_target_created() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("run/krunbox/resolv.conf");
        let target = dir.path().join("etc/resolv.conf");
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        prepare_resolver(Ipv4Addr::new(10, 0, 2, 2), &ours, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(&ours).unwrap(),
            "nameserver 10.0.2.2\n"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn an_existing_target_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours");
        let target = dir.path().join("resolv.conf");
        std::fs::write(&target, "nameserver 192.0.2.1\n").unwrap();
        prepare_resolver(Ipv4Addr::new(10, 0, 2, 2), &ours, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "nameserver 192.0.2.1\n"
        );
    }

    #[test]
    fn a_dangling_symlink_target_gets_its_destination_created() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let target = dir.path().join("etc/resolv.conf");
        std::os::unix::fs::symlink("../run/resolve/stub-resolv.conf", &target).unwrap();
        prepare_resolver(
            Ipv4Addr::new(10, 0, 2, 2),
            &dir.path().join("ours"),
            &target,
        )
        .unwrap();
        assert!(dir.path().join("run/resolve/stub-resolv.conf").is_file());
        assert!(target.exists());
    }

    #[test]
    fn a_target_that_cannot_be_created_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("not-a-dir/resolv.conf");
        std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
        let err = prepare_resolver(
            Ipv4Addr::new(10, 0, 2, 2),
            &dir.path().join("ours"),
            &target,
        )
        .unwrap_err();
        assert!(matches!(err, ResolverError::MountPoint { .. }), "{err}");
    }
}
