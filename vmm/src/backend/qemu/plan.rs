//! What the supervisor launches for one VM: the helper daemons and QEMU, as plain data.
//!
//! Built by the parent (pure functions, unit-tested here), sent to the supervisor as JSON.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::guest_boot::{self, guest_boot};
use super::super::run_layout::RunLayout;
use super::super::ssh_agent_relay::SshAgentRelay;
use super::super::{net, BackendError, Helper, Network, VmSpec};
use super::virtiofs;
use krunbox_protocol::boot::{quote_word, GuestBoot};

/// The virtio-fs tag of the root filesystem.
pub const ROOT_TAG: &str = "rootfs";

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// What to call it in errors (`virtiofsd (rootfs)`).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// A socket it creates when ready; the next process starts only once it exists.
    pub ready_socket: Option<PathBuf>,
    /// What it serves, for a helper (`None` for QEMU): its death stops the VM.
    pub role: Option<Helper>,
}

/// Everything the supervisor does for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    /// The run directory (created and locked by the supervisor, removed when it ends).
    pub run_dir: PathBuf,
    /// Started first, in order.
    pub helpers: Vec<ProcessPlan>,
    /// QEMU itself.
    pub vmm: ProcessPlan,
    /// With `--ssh`: the filtering relay to the host's SSH agent, which the supervisor starts
    /// before anything else, listening where vhost-device-vsock connects guest connections
    /// to host port [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] (see
    /// [`Layout::host_port_socket`]).
    #[serde(default)]
    pub ssh_agent_relay: Option<SshAgentRelay>,
}

/// The files of a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    run: RunLayout,
}

/// The files every backend has ([`RunLayout`]) are this layout's too.
impl std::ops::Deref for Layout {
    type Target = RunLayout;

    fn deref(&self) -> &RunLayout {
        &self.run
    }
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            run: RunLayout::new(dir),
        }
    }

    /// vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vsock_backend(&self) -> PathBuf {
        self.dir().join("vhost-vsock.sock")
    }

    /// The host side of the guest's vsock (hybrid vsock: `CONNECT <port>`).
    pub fn agent_uds(&self) -> PathBuf {
        self.dir().join("vm.vsock")
    }

    /// Where vhost-device-vsock connects a guest's connection to host vsock `port`: the agent
    /// socket's path with `_PORT` appended (its `--uds-path` convention).
    pub fn host_port_socket(&self, port: u32) -> PathBuf {
        let mut path = self.agent_uds().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }

    /// vhost-user socket of virtio-fs share `index` (0 is the root).
    pub fn fs_socket(&self, index: usize) -> PathBuf {
        self.dir().join(format!("fs{index}.sock"))
    }
}

/// Host-side inputs besides the spec.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// virtiofsd.
    pub virtiofsd: PathBuf,
    /// vhost-device-vsock.
    pub vhost_device_vsock: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// KVM (else TCG).
    pub kvm: bool,
    /// Who krunbox runs as (virtiofsd's sandbox and id mapping follow from it).
    pub privilege: virtiofs::Privilege,
    /// The krunbox binary (for its `__net` helper).
    pub krunbox: PathBuf,
}

/// The guest CID (any value ≥ 3; each VM has its own vsock device, so it need not be unique).
const GUEST_CID: &str = "3";

/// Builds the plan for `spec` in `layout`.
pub fn build(spec: &VmSpec, layout: &Layout, inputs: &Inputs) -> Result<LaunchPlan, BackendError> {
    spec.validate()?;
    let mut helpers = vec![ProcessPlan {
        name: "vhost-device-vsock".into(),
        program: inputs.vhost_device_vsock.clone(),
        args: vec![
            "--guest-cid".into(),
            GUEST_CID.into(),
            "--socket".into(),
            path_arg(&layout.vsock_backend()),
            "--uds-path".into(),
            path_arg(&layout.agent_uds()),
        ],
        log: layout.log("vhost-device-vsock"),
        ready_socket: Some(layout.vsock_backend()),
        role: Some(Helper::Vsock),
    }];
    // A store image is shared by every sandbox of it: read-only at the host, so no guest can
    // change what the next one boots (the guest's writes go to its tmpfs overlay).
    let sources = std::iter::once((&spec.rootfs, spec.root_overlay))
        .chain(spec.shares.iter().map(|s| (&s.host_path, s.read_only)));
    for (index, (source, read_only)) in sources.enumerate() {
        let tag = share_tag(index);
        let served = virtiofs::Served {
            source,
            read_only,
            is_root: index == 0,
            owner: owner_of(source)?,
        };
        helpers.push(ProcessPlan {
            name: format!("virtiofsd ({tag})"),
            program: inputs.virtiofsd.clone(),
            args: virtiofs::args(&served, &layout.fs_socket(index), inputs.privilege),
            log: layout.log(&format!("virtiofsd-{tag}")),
            ready_socket: Some(layout.fs_socket(index)),
            role: Some(Helper::FileServer),
        });
    }

    let user_network = match &spec.network {
        Network::User(network) => Some(network),
        Network::Disabled => None,
        Network::Tsi => {
            return Err(BackendError::InvalidSpec(
                "TSI networking needs the libkrun backend (use --backend krun, or the default \
                 network)"
                    .into(),
            ))
        }
    };
    if let Some(network) = user_network {
        helpers.push(ProcessPlan {
            name: "network".into(),
            program: inputs.krunbox.clone(),
            args: net::helper_args(&layout.net_socket(), network, false)?,
            log: layout.log("net"),
            ready_socket: Some(layout.net_socket()),
            role: Some(Helper::Network),
        });
    }

    let memory = format!("{}M", spec.memory_mib);
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!(
            "krunbox-{}",
            layout
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        "-machine".into(),
        "q35,memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory},share=on"),
        "-m".into(),
        memory,
        "-smp".into(),
        spec.cpus.to_string(),
        "-accel".into(),
        if inputs.kvm { "kvm" } else { "tcg" }.into(),
        "-cpu".into(),
        if inputs.kvm { "host" } else { "max" }.into(),
        "-nographic".into(),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", layout.console_pipe().display()),
        "-kernel".into(),
        path_arg(&inputs.kernel),
        "-initrd".into(),
        path_arg(&inputs.initramfs),
        "-append".into(),
        kernel_cmdline(spec),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", layout.vsock_backend().display()),
        "-device".into(),
        "vhost-user-vsock-pci,chardev=vsock".into(),
        // Pages the guest frees are reported and dropped from the memfd: an idle guest
        // gives memory back to the host (needs the guest's virtio_balloon driver).
        "-device".into(),
        "virtio-balloon-pci,free-page-reporting=on".into(),
        // Entropy from the host: without it the guest's random pool may stay uninitialised
        // for minutes under TCG and getrandom(2) blocks (TLS clients, Node.js, Python).
        "-device".into(),
        "virtio-rng-pci".into(),
    ];
    if user_network.is_some() {
        let mac = net::mac_text(net::GUEST_MAC);
        args.push("-netdev".into());
        args.push(format!(
            "stream,id=net0,server=off,addr.type=unix,addr.path={}",
            layout.net_socket().display()
        ));
        args.push("-device".into());
        args.push(format!("virtio-net-pci,netdev=net0,mac={mac},romfile="));
    }
    for index in 0..=spec.shares.len() {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=fs{index},path={}",
            layout.fs_socket(index).display()
        ));
        args.push("-device".into());
        args.push(format!(
            "vhost-user-fs-pci,chardev=fs{index},tag={}",
            share_tag(index)
        ));
    }
    let ssh_agent_relay = spec.ssh_agent.as_ref().map(|agent| SshAgentRelay {
        listen: layout.host_port_socket(krunbox_protocol::SSH_AGENT_VSOCK_PORT),
        agent: agent.clone(),
    });
    Ok(LaunchPlan {
        run_dir: layout.dir().to_owned(),
        ssh_agent_relay,
        helpers,
        vmm: ProcessPlan {
            name: "qemu".into(),
            program: inputs.qemu.clone(),
            args,
            log: layout.log("qemu"),
            ready_socket: None,
            role: None,
        },
    })
}

/// The owner (uid, gid) of a directory to serve.
fn owner_of(dir: &Path) -> Result<(u32, u32), BackendError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .map_err(|e| BackendError::InvalidSpec(format!("cannot share {}: {e}", dir.display())))?;
    Ok((meta.uid(), meta.gid()))
}

/// The tag of virtio-fs device `index`: the root (0), then the spec's shares.
fn share_tag(index: usize) -> String {
    if index == 0 {
        ROOT_TAG.into()
    } else {
        guest_boot::share_tag(index)
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The kernel command line: the kernel's words
/// ([`QEMU_KERNEL_WORDS`](krunbox_protocol::boot::QEMU_KERNEL_WORDS)), then guest-init's
/// settings ([`guest_boot`]), with the root share to switch into.
pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let boot = GuestBoot {
        root_tag: Some(ROOT_TAG.into()),
        ..guest_boot(spec)
    };
    let kernel = krunbox_protocol::boot::QEMU_KERNEL_WORDS.map(String::from);
    let words: Vec<String> = boot.to_words().iter().map(|w| quote_word(w)).collect();
    [kernel.as_slice(), &words].concat().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SharedDir;

    fn inputs() -> Inputs {
        Inputs {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            virtiofsd: "/usr/libexec/virtiofsd".into(),
            vhost_device_vsock: "/bin/vhost-device-vsock".into(),
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initramfs.cpio".into(),
            kvm: false,
            privilege: virtiofs::Privilege::Root,
            krunbox: "/bin/krunbox".into(),
        }
    }

    fn joined(plan: &ProcessPlan) -> String {
        plan.args.join(" ")
    }

    #[test]
    fn the_user_network_is_a_helper_and_a_card_and_none_is_neither() {
        let root = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        let layout = Layout::new("/run/krunbox/abc".into());
        let plan = build(&spec, &layout, &inputs()).unwrap();
        let helper = plan.helpers.last().unwrap();
        assert_eq!(helper.program, Path::new("/bin/krunbox"));
        assert_eq!(
            helper.args[..3],
            ["__net", "--socket", "/run/krunbox/abc/net.sock"]
        );
        assert_eq!(
            helper.ready_socket.as_deref(),
            Some(layout.net_socket().as_path())
        );
        assert!(kernel_cmdline(&spec).contains("krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.2"));
        spec.network = Network::Disabled;
        let plan = build(&spec, &layout, &inputs()).unwrap();
        assert!(plan.helpers.iter().all(|h| h.name != "network"));
        assert!(!joined(&plan.vmm).contains("virtio-net"));
        assert!(!kernel_cmdline(&spec).contains("krunbox.net"));
        spec.network = Network::Tsi;
        assert!(matches!(
            build(&spec, &layout, &inputs()),
            Err(BackendError::InvalidSpec(_))
        ));
    }

    #[test]
    fn a_tcg_vm_with_one_share() {
        let share_dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.cpus = 2;
        spec.memory_mib = 1024;
        spec.hostname = "box".into();
        spec.shares.push(SharedDir {
            host_path: share_dir.path().to_owned(),
            guest_path: "/work".into(),
            read_only: true,
        });
        let layout = Layout::new("/run/krunbox/abc".into());
        let plan = build(&spec, &layout, &inputs()).unwrap();
        assert_eq!(plan.helpers.len(), 4);
        assert_eq!(
            joined(&plan.helpers[0]),
            "--guest-cid 3 --socket /run/krunbox/abc/vhost-vsock.sock --uds-path /run/krunbox/abc/vm.vsock"
        );
        assert_eq!(
            joined(&plan.helpers[1]),
            format!(
                "--socket-path=/run/krunbox/abc/fs0.sock --shared-dir={} --cache=never \
                 --sandbox=chroot --modcaps=-mknod:-setfcap",
                root.path().display()
            ),
            "a writable root keeps the guest's ids"
        );
        assert!(
            joined(&plan.helpers[2]).ends_with("--readonly"),
            "a :ro share is read-only at the host"
        );
        let mut image_spec = spec.clone();
        image_spec.root_overlay = true;
        let plan = build(&image_spec, &layout, &inputs()).unwrap();
        assert!(
            joined(&plan.helpers[1]).ends_with("--readonly"),
            "a store image is read-only at the host"
        );
        let plan = build(&spec, &layout, &inputs()).unwrap();
        let qemu = joined(&plan.vmm);
        for expected in [
            "-machine q35,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=1024M,share=on",
            "-smp 2",
            "-accel tcg -cpu max",
            "-serial file:/run/krunbox/abc/console.pipe",
            "-device vhost-user-vsock-pci,chardev=vsock",
            "-device virtio-balloon-pci,free-page-reporting=on",
            "-device virtio-rng-pci",
            "-device vhost-user-fs-pci,chardev=fs0,tag=rootfs",
            "-device vhost-user-fs-pci,chardev=fs1,tag=share1",
            "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/krunbox/abc/net.sock",
            "-device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
        ] {
            assert!(qemu.contains(expected), "{expected:?} missing from {qemu}");
        }
        let cmdline = kernel_cmdline(&spec);
        assert_eq!(
            cmdline,
            "console=ttyS0 rdinit=/init panic=-1 quiet no_timer_check krunbox.root=virtiofs:rootfs \
             krunbox.hostname=box krunbox.port=1024 krunbox.mounts=share1:/work:ro \
             krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.2"
        );
        spec.root_overlay = true;
        assert!(kernel_cmdline(&spec).contains(" krunbox.overlay=tmpfs"));
    }

    #[test]
    fn the_ssh_agent_relay_listens_where_vhost_device_vsock_connects() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
        let mut spec = VmSpec::new("/".into(), "/gi".into());
        let layout = Layout::new("/run/krunbox/abc".into());
        let plan = build(&spec, &layout, &inputs()).unwrap();
        assert!(plan.ssh_agent_relay.is_none());
        assert!(!kernel_cmdline(&spec).contains("ssh_agent"));

        spec.ssh_agent = Some(agent.clone());
        let plan = build(&spec, &layout, &inputs()).unwrap();
        assert_eq!(
            plan.ssh_agent_relay,
            Some(SshAgentRelay {
                listen: "/run/krunbox/abc/vm.vsock_1025".into(),
                agent,
            })
        );
        assert!(kernel_cmdline(&spec).contains(" krunbox.ssh_agent=1025"));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let spec = VmSpec::new("/".into(), "/gi".into());
        let mut inputs = inputs();
        inputs.kvm = true;
        let plan = build(&spec, &Layout::new("/d".into()), &inputs).unwrap();
        assert!(joined(&plan.vmm).contains("-accel kvm -cpu host"));
    }

    #[test]
    fn what_the_command_line_cannot_carry_is_rejected() {
        let mut spec = VmSpec::new("/r".into(), "/gi".into());
        spec.hostname = "two words".into();
        let err = build(&spec, &Layout::new("/d".into()), &inputs()).unwrap_err();
        assert!(err.to_string().contains("hostname"), "{err}");
        let mut spec = VmSpec::new("/r".into(), "/gi".into());
        spec.shares.push(SharedDir {
            host_path: "/".into(),
            guest_path: "/a,b".into(),
            read_only: false,
        });
        assert!(build(&spec, &Layout::new("/d".into()), &inputs()).is_err());
        let mut spec = VmSpec::new("/r".into(), "/gi".into());
        spec.memory_mib = 16;
        assert!(build(&spec, &Layout::new("/d".into()), &inputs()).is_err());
    }
}
