//! # krunbox-protocol
//!
//! The wire protocol between the krunbox host and `guest-init`, the agent that runs as PID 1
//! inside every krunbox micro-VM, and the async client programs use to drive it.
//!
//! - [`boot`]: the guest's boot settings (kernel command line words the host writes and
//!   guest-init reads);
//! - [`capability`]: Linux capabilities by name, as `docker run --cap-add` and OCI name them;
//! - [`messages`]: the protobuf messages (one [`messages::Envelope`] per frame);
//! - [`frame`]: length-delimited framing with a hard size limit;
//! - [`generation`]: protocol generations and the handshake that agrees one;
//! - [`flow`]: per-operation credit windows;
//! - [`rlimit`]: resource limits by name, as `ulimit` and `docker run --ulimit` name them;
//! - [`transport`]: how the host reaches an agent (Unix socket, hybrid vsock);
//! - [`client`]: the async client;
//! - [`ssh_agent`]: the SSH agent protocol's framing and the filter of guest requests.
//!
//! ## Connection model
//!
//! One connection carries many concurrent operations (execs, file transfers, pings). The host
//! opens each operation with a request frame under a fresh envelope id; every frame of that
//! operation carries the id, and the operation ends with its terminal frame (`Exit`,
//! `FileResult`, `Error`, `Pong`, `ShutdownAck`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), krunbox_protocol::client::ClientError> {
//! use krunbox_protocol::client::{Client, ExecSpec};
//! use krunbox_protocol::transport::AgentAddress;
//!
//! let address: AgentAddress = "unix:/tmp/agent.sock".parse().expect("valid address");
//! let client = Client::connect(&address).await?;
//! let output = client.exec(ExecSpec::new(["echo", "hello"])).await?.collect().await?;
//! assert_eq!(output.stdout, b"hello\n");
//! client.put(&b"data"[..], "/tmp/file", 0o600).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod boot;
pub mod capability;
pub mod client;
pub mod flow;
pub mod frame;
pub mod generation;
pub mod messages;
pub mod rlimit;
pub mod ssh_agent;
pub mod transport;

pub use flow::INITIAL_WINDOW;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The line guest-init writes on the console, whatever its log level, once it listens on
/// vsock. The QEMU backend connects to the agent only after it: vhost-device-vsock 0.3.0
/// loses its worker thread for good (the VM's vsock is dead from then on) when a host
/// connection is pending before the guest's driver has set up the device's memory, which a
/// host that connects while the guest still boots provokes now and then.
pub const AGENT_READY_LINE: &str = "krunbox-agent: listening";

/// The host vsock port a guest connects to for the host's SSH agent (`krunbox run --ssh`):
/// guest-init relays each connection to its `/run/krunbox/ssh-agent.sock` there, and the
/// host relays the port to its `SSH_AUTH_SOCK` through the [`ssh_agent`] filter.
///
/// ```
/// assert_ne!(krunbox_protocol::SSH_AGENT_VSOCK_PORT, krunbox_protocol::AGENT_VSOCK_PORT);
/// ```
pub const SSH_AGENT_VSOCK_PORT: u32 = 1025;
