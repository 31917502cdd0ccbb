//! The gateway: the guest's only network peer.
//!
//! Every Ethernet frame of the guest arrives here from the VMM's stream socket. smoltcp (with
//! AnyIP: it answers for every address) terminates the guest's TCP connections and DNS
//! queries; each TCP connection is decided by the [`EgressPolicy`] *before* the guest's SYN is
//! processed, and an allowed one becomes a real socket of this process to the host-side
//! destination, its bytes copied both ways ([`crate::conn`]). A denied connection, or one
//! whose host-side connect fails, is answered with a reset: the guest sees "connection
//! refused". Every decision is logged (target `egress`).
//!
//! What a guest may hold is capped ([`Limits`]): connections at once (a SYN past the cap is
//! reset), the time a connection may take to connect and to complete its handshake, idle
//! time, and DNS queries in resolution. A resolver's answer is screened before the guest sees
//! it: internal addresses are refused unless an `--allow-net` rule names them (DNS
//! rebinding, see [`EgressPolicy::screen_answer`]).
//!
//! One task owns the stack (smoltcp is not thread-safe); the VMM socket's reader and writer,
//! every host connection, resolution and every published port's listener are tasks that talk
//! to it through bounded channels and wake it with a [`Notify`].
//!
//! [`EgressPolicy`]: crate::policy::EgressPolicy
//! [`EgressPolicy::screen_answer`]: crate::policy::EgressPolicy::screen_answer

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::audit::{self, Verdict};
use crate::config::{NetConfig, PublishedPort, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, PREFIX_LEN};
pub use crate::conn::host_side;
use crate::conn::Conn;
use crate::device::QueueDevice;
use crate::framing::{read_frame, write_frame};
use crate::inspect::{tcp_syn, unforwarded, Flow};
use crate::limits::Limits;
use crate::policy::ResolvedNames;
use crate::resolver::{self, ResolveError, Resolved};
use crate::secrets::Interceptor;
use crate::NetError;

mod dns_server;
mod egress;
mod published;

/// Frames queued from the VMM's socket and to it. Each is at most a frame's size
/// ([`crate::config::MAX_FRAME`] and a little slack), so each queue holds about 0.8 MiB.
const FRAME_QUEUE: usize = 512;
/// Guest frames the stack takes per round before it serves its sockets.
const FRAMES_PER_ROUND: usize = 256;

/// What the gateway's tasks tell it.
enum Event {
    /// The host side of an allowed connection is connected (or failed).
    Connected {
        flow: Flow,
        syn: Vec<u8>,
        result: std::io::Result<TcpStream>,
    },
    /// The host's resolver answered a guest's DNS query.
    Resolved {
        to: IpEndpoint,
        query: Vec<u8>,
        name: String,
        result: Result<Resolved, ResolveError>,
    },
    /// A published port accepted a connection.
    Inbound {
        stream: TcpStream,
        peer: SocketAddr,
        port: PublishedPort,
    },
}

/// Work that needs the host, started as a task after each round.
enum Job {
    /// Connect the host side of an allowed guest SYN.
    Connect {
        flow: Flow,
        dest: SocketAddrV4,
        syn: Vec<u8>,
    },
    /// Resolve a guest's query.
    Resolve {
        to: IpEndpoint,
        query: Vec<u8>,
        name: String,
    },
}

/// A cap's refusals are logged once per episode (until the count is below the cap again),
/// so a guest hammering a cap cannot fill the log with it.
#[derive(Debug, Default)]
struct CapNotice(bool);

impl CapNotice {
    /// Whether this refusal is the episode's first (and so is logged).
    fn first(&mut self) -> bool {
        !std::mem::replace(&mut self.0, true)
    }

    fn clear(&mut self) {
        self.0 = false;
    }
}

/// The guest's view of a host-side address: loopback addresses become the gateway.
pub fn guest_side(ip: Ipv4Addr) -> Ipv4Addr {
    if ip.is_loopback() {
        GATEWAY_IP
    } else {
        ip
    }
}

/// The gateway of one VM.
pub struct Gateway {
    config: NetConfig,
    limits: Limits,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    dns: SocketHandle,
    conns: HashMap<SocketHandle, Conn>,
    /// Guest-initiated connections with a socket (a subset of `conns`).
    flows: HashMap<Flow, SocketHandle>,
    /// Guest SYNs whose host side is connecting.
    connecting: HashSet<Flow>,
    unforwarded_logged: HashSet<(&'static str, SocketAddrV4)>,
    names: ResolvedNames,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    wake: Arc<Notify>,
    next_port: u16,
    jobs: Vec<Job>,
    pending_dns: usize,
    connection_cap: CapNotice,
    inbound_cap: CapNotice,
    dns_cap: CapNotice,
    interceptor: Option<Arc<Interceptor>>,
}

impl Gateway {
    /// A gateway for `config`, with the default [`Limits`].
    pub fn new(config: NetConfig) -> Self {
        Self::with_limits(config, Limits::default())
    }

    /// A gateway for `config` with `limits` (tests shorten the timeouts).
    pub fn with_limits(config: NetConfig, limits: Limits) -> Self {
        let mut device = QueueDevice::default();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        iface_config.random_seed = fastrand::u64(..);
        let mut iface = Interface::new(iface_config, &mut device, Instant::now());
        iface.update_ip_addrs(|addrs| {
            // One address on a fresh interface: cannot be full.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), PREFIX_LEN));
        });
        // AnyIP: the gateway answers for every destination the guest routes to it.
        iface.set_any_ip(true);
        let mut sockets = SocketSet::new(Vec::new());
        let mut dns_socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
        );
        // Binding a fresh socket to a valid endpoint cannot fail.
        let _ = dns_socket.bind(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(GATEWAY_IP)),
            port: 53,
        });
        let dns = sockets.add(dns_socket);
        let (events_tx, events_rx) = mpsc::channel(256);
        Self {
            config,
            limits,
            iface,
            device,
            sockets,
            dns,
            conns: HashMap::new(),
            flows: HashMap::new(),
            connecting: HashSet::new(),
            unforwarded_logged: HashSet::new(),
            names: ResolvedNames::default(),
            events_tx,
            events_rx,
            wake: Arc::new(Notify::new()),
            next_port: 49152,
            jobs: Vec::new(),
            pending_dns: 0,
            connection_cap: CapNotice::default(),
            inbound_cap: CapNotice::default(),
            dns_cap: CapNotice::default(),
            interceptor: None,
        }
    }

    /// Intercepts TLS to the secrets' hosts with `interceptor`, and serves its CA to the
    /// guest on [`TRUST_PORT`].
    pub fn with_interceptor(mut self, interceptor: Arc<Interceptor>) -> Self {
        self.interceptor = Some(interceptor);
        self
    }

    /// Serves the guest on `vmm` (the VMM's end of the network card) until the VMM closes it.
    /// `published` are the listeners of the published ports, already bound.
    pub async fn run<S>(
        mut self,
        vmm: S,
        published: Vec<(TcpListener, PublishedPort)>,
    ) -> Result<(), NetError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(vmm);
        let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(FRAME_QUEUE);
        let reader_task = tokio::spawn(async move {
            loop {
                match read_frame(&mut reader).await {
                    Ok(Some(frame)) => {
                        if frames_tx.send(frame).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        });
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(FRAME_QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if let Err(e) = write_frame(&mut writer, &frame).await {
                    debug!("writing to the VMM: {e}");
                    break;
                }
            }
        });
        for (listener, port) in published {
            let events = self.events_tx.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let event = Event::Inbound { stream, peer, port };
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!("published port {}: accept: {e}", port.host);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }

        loop {
            let delay = self
                .iface
                .poll_delay(Instant::now(), &self.sockets)
                .map(|d| Duration::from_millis(d.total_millis()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let wake = Arc::clone(&self.wake);
            tokio::select! {
                frame = frames_rx.recv() => match frame {
                    Some(frame) => {
                        self.incoming(frame);
                        for _ in 1..FRAMES_PER_ROUND {
                            let Ok(frame) = frames_rx.try_recv() else { break };
                            self.incoming(frame);
                        }
                    }
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.handle(event),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            self.process();
            self.start_jobs();
            while let Some(frame) = self.device.tx.pop_front() {
                if let Err(TrySendError::Full(_)) = out_tx.try_send(frame) {
                    debug!("the VMM is slow: dropped a frame to the guest");
                }
            }
        }
        match reader_task.await {
            Ok(Ok(())) => {
                info!("the VMM closed the guest's network");
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(NetError::Task(e.to_string())),
        }
    }

    /// Runs one frame from the guest through everything the gateway does with it — its own
    /// SYN and unforwarded checks, smoltcp, the DNS server — without a runtime and without
    /// touching the host: the host connections and resolutions it would start are dropped
    /// (that SYN and that query stay unanswered). Returns the frames the gateway sends back.
    /// For fuzzing; [`Gateway::run`] is the real thing.
    pub fn handle_frame_offline(&mut self, frame: Vec<u8>) -> Vec<Vec<u8>> {
        self.incoming(frame);
        self.process();
        for job in self.jobs.drain(..) {
            match job {
                Job::Connect { flow, .. } => {
                    self.connecting.remove(&flow);
                }
                Job::Resolve { .. } => self.pending_dns -= 1,
            }
        }
        self.device.tx.drain(..).collect()
    }

    /// Guest-initiated connections open or connecting.
    fn guest_connections(&self) -> usize {
        self.connecting.len() + self.flows.len()
    }

    /// Takes a frame from the guest: a new TCP connection is decided first.
    fn incoming(&mut self, frame: Vec<u8>) {
        if let Some((protocol, dest)) = unforwarded(&frame) {
            // Logged once per destination (bounded), then dropped silently.
            if self.unforwarded_logged.len() < 1024
                && self.unforwarded_logged.insert((protocol, dest))
            {
                audit::record(
                    protocol,
                    GUEST_IP,
                    dest,
                    &[],
                    Verdict::Deny,
                    "only TCP and DNS are forwarded",
                );
            }
        }
        if let Some(flow) = tcp_syn(&frame) {
            if self.connecting.contains(&flow) {
                return; // the guest retransmitted its SYN while the host side connects
            }
            if !self.flows.contains_key(&flow) && self.decide_syn(flow, &frame) {
                return; // the host side connects first
            }
        }
        // A SYN no socket listens for is answered with a reset by smoltcp.
        self.device.rx.push_back(frame);
    }

    /// Starts the round's host work as tasks.
    fn start_jobs(&mut self) {
        for job in std::mem::take(&mut self.jobs) {
            let events = self.events_tx.clone();
            match job {
                Job::Connect { flow, dest, syn } => {
                    let timeout = self.limits.connect_timeout;
                    tokio::spawn(async move {
                        let result = tokio::time::timeout(timeout, TcpStream::connect(dest))
                            .await
                            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                        let _ = events.send(Event::Connected { flow, syn, result }).await;
                    });
                }
                Job::Resolve { to, query, name } => {
                    let server = self.config.dns_server;
                    let timeout = self.limits.resolve_timeout;
                    tokio::spawn(async move {
                        let result = resolver::resolve(&name, server, timeout).await;
                        let event = Event::Resolved {
                            to,
                            query,
                            name,
                            result,
                        };
                        let _ = events.send(event).await;
                    });
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { flow, syn, result } => {
                self.connecting.remove(&flow);
                match result {
                    Ok(stream) => {
                        let label = format!("{} -> {}", flow.guest, host_side(flow.dest));
                        let wake = self.wake.clone();
                        let interceptor = self
                            .interceptor
                            .as_ref()
                            .filter(|i| i.watches(flow.dest.port()));
                        let conn = match interceptor {
                            Some(interceptor) => {
                                let (near, far) = tokio::io::duplex(2 * crate::conn::CHUNK);
                                tokio::spawn(Arc::clone(interceptor).serve(far, stream, flow));
                                Conn::attach_local(near, label, Some(flow), wake)
                            }
                            None => Conn::attach(stream, label, Some(flow), wake),
                        };
                        self.add_guest_socket(flow, conn);
                    }
                    Err(e) => audit::record(
                        "tcp",
                        flow.guest,
                        host_side(flow.dest),
                        &[],
                        Verdict::Reset,
                        &format!("the host's connection failed: {e}"),
                    ),
                }
                self.device.rx.push_back(syn);
            }
            Event::Resolved {
                to,
                query,
                name,
                result,
            } => {
                self.pending_dns = self.pending_dns.saturating_sub(1);
                if self.pending_dns < self.limits.max_pending_dns {
                    self.dns_cap.clear();
                }
                let answer = self.screen_resolved(&name, result);
                self.reply_dns(to, &query, &answer);
            }
            Event::Inbound { stream, peer, port } => self.inbound(stream, peer, port),
        }
    }

    fn process(&mut self) {
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
        self.serve_dns();
        self.copy_connections();
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
    }

    /// Moves bytes between every guest socket and its host connection; resets connections
    /// past their handshake or idle timeout; ends finished ones (a socket reset in this round
    /// is removed in the next, so its reset is sent first).
    fn copy_connections(&mut self) {
        let now = std::time::Instant::now();
        let limits = self.limits;
        let mut finished = Vec::new();
        for (&handle, conn) in self.conns.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            let state = socket.state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                debug!("{}: done ({state})", conn.label);
                finished.push(handle);
                continue;
            }
            conn.pump(socket);
            let handshaking = matches!(
                state,
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent
            );
            if handshaking && now.duration_since(conn.created) > limits.handshake_timeout {
                conn.record_reset(&format!(
                    "no handshake within {} s",
                    limits.handshake_timeout.as_secs_f32()
                ));
                socket.abort();
            } else if !handshaking && now.duration_since(conn.last_activity) > limits.idle_timeout {
                conn.record_reset(&format!(
                    "idle for {} s, the gateway's idle timeout",
                    limits.idle_timeout.as_secs_f32()
                ));
                socket.abort();
            }
        }
        for handle in finished {
            if let Some(conn) = self.conns.remove(&handle) {
                if let Some(flow) = conn.flow {
                    self.flows.remove(&flow);
                }
            }
            self.sockets.remove(handle);
        }
        if self.guest_connections() < self.limits.max_guest_connections {
            self.connection_cap.clear();
        }
        if self.conns.len() - self.flows.len() < self.limits.max_inbound_connections {
            self.inbound_cap.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_hosts_loopback() {
        let dest = SocketAddrV4::new(GATEWAY_IP, 8080);
        assert_eq!(host_side(dest), "127.0.0.1:8080".parse().expect("addr"));
        let public: SocketAddrV4 = "93.184.216.34:443".parse().expect("addr");
        assert_eq!(host_side(public), public);
        assert_eq!(guest_side(Ipv4Addr::new(127, 0, 0, 53)), GATEWAY_IP);
        assert_eq!(guest_side(*public.ip()), *public.ip());
    }
}
