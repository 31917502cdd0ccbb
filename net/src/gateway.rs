//! The gateway: the guest's only network peer.
//!
//! Every Ethernet frame of the guest arrives here from the VMM's stream socket. smoltcp (with
//! AnyIP: it answers for every address) terminates the guest's TCP connections and DNS
//! queries; each TCP connection is decided by the [`EgressPolicy`] *before* the guest's SYN is
//! processed, and an allowed one becomes a real socket of this process to the host-side
//! destination, its bytes copied both ways. A denied connection, or one whose host-side
//! connect fails, is answered with a reset: the guest sees "connection refused". Every
//! decision is logged (target `egress`).
//!
//! One task owns the stack (smoltcp is not thread-safe); the VMM socket's reader and writer,
//! every host connection and every published port's listener are tasks that talk to it
//! through channels and wake it with a [`Notify`].
//!
//! [`EgressPolicy`]: crate::policy::EgressPolicy

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpEndpoint, IpListenEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::config::{
    NetConfig, PublishedPort, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, HOST_ALIAS, PREFIX_LEN,
};
use crate::device::QueueDevice;
use crate::dns::{self, Answer, Question};
use crate::framing::{read_frame, write_frame};
use crate::policy::ResolvedNames;
use crate::NetError;

/// Bytes each guest TCP socket buffers per direction.
const TCP_BUFFER: usize = 256 * 1024;
/// Bytes moved per chunk between a guest socket and its host connection.
const CHUNK: usize = 32 * 1024;
/// How long an allowed connection's host side may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the host's resolver may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A socket that waits for a guest SYN that never comes is dropped after this.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest TCP connection: guest address → destination as the guest addressed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    guest: SocketAddrV4,
    dest: SocketAddrV4,
}

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
        result: Result<Vec<Ipv4Addr>, String>,
    },
    /// A published port accepted a connection.
    Inbound {
        stream: TcpStream,
        peer: SocketAddr,
        port: PublishedPort,
    },
}

/// One guest TCP socket paired with a host connection.
struct Conn {
    label: String,
    flow: Option<Flow>,
    to_host: Option<mpsc::Sender<Bytes>>,
    from_host: mpsc::Receiver<Bytes>,
    unsent: Bytes,
    host_done: bool,
    closing: bool,
    created: std::time::Instant,
}

/// The host side of a destination as the guest addressed it: the gateway is the host's
/// loopback.
pub fn host_side(dest: SocketAddrV4) -> SocketAddrV4 {
    if *dest.ip() == GATEWAY_IP {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, dest.port())
    } else {
        dest
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
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    dns: SocketHandle,
    conns: HashMap<SocketHandle, Conn>,
    flows: HashMap<Flow, SocketHandle>,
    connecting: HashSet<Flow>,
    unforwarded_logged: HashSet<(&'static str, SocketAddrV4)>,
    names: ResolvedNames,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    wake: Arc<Notify>,
    next_port: u16,
}

impl Gateway {
    /// A gateway for `config`.
    pub fn new(config: NetConfig) -> Self {
        let mut device = QueueDevice::default();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        iface_config.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
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
        }
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
        let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(512);
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
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
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
                        while let Ok(frame) = frames_rx.try_recv() {
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

    /// Takes a frame from the guest: a new TCP connection is decided first.
    fn incoming(&mut self, frame: Vec<u8>) {
        if let Some((protocol, dest)) = unforwarded(&frame) {
            // Logged once per destination (bounded), then dropped silently.
            if self.unforwarded_logged.len() < 1024
                && self.unforwarded_logged.insert((protocol, dest))
            {
                info!(
                    target: "egress",
                    "{protocol} {GUEST_IP} -> {dest}: deny (only TCP and DNS are forwarded)"
                );
            }
        }
        if let Some(flow) = tcp_syn(&frame) {
            if self.connecting.contains(&flow) {
                return; // the guest retransmitted its SYN while the host side connects
            }
            if !self.flows.contains_key(&flow) {
                let dest = host_side(flow.dest);
                let host_own = crate::policy::is_host_address(*dest.ip());
                let decision = self.config.policy.decide(dest, &self.names, host_own);
                let names: Vec<&str> = self.names.names_of(*dest.ip()).collect();
                let names = if names.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", names.join(", "))
                };
                info!(
                    target: "egress",
                    "tcp {} -> {dest}{names}: {decision}",
                    flow.guest
                );
                if decision.is_allowed() {
                    self.connecting.insert(flow);
                    let events = self.events_tx.clone();
                    tokio::spawn(async move {
                        let result =
                            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dest))
                                .await
                            {
                                Ok(result) => result,
                                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                            };
                        let _ = events
                            .send(Event::Connected {
                                flow,
                                syn: frame,
                                result,
                            })
                            .await;
                    });
                    return;
                }
                // No socket listens: smoltcp answers with a reset.
            }
        }
        self.device.rx.push_back(frame);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { flow, syn, result } => {
                self.connecting.remove(&flow);
                match result {
                    Ok(stream) => {
                        let mut socket = new_tcp_socket();
                        let endpoint = IpListenEndpoint {
                            addr: Some(IpAddress::Ipv4(*flow.dest.ip())),
                            port: flow.dest.port(),
                        };
                        if let Err(e) = socket.listen(endpoint) {
                            warn!("listening for {}: {e}", flow.dest);
                        } else {
                            let handle = self.sockets.add(socket);
                            let label = format!("{} -> {}", flow.guest, host_side(flow.dest));
                            self.attach(handle, stream, label, Some(flow));
                            self.flows.insert(flow, handle);
                        }
                    }
                    Err(e) => info!(
                        target: "egress",
                        "tcp {} -> {}: host connect failed ({e}); refused",
                        flow.guest,
                        host_side(flow.dest)
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
                let answer = match result {
                    Ok(addresses) => {
                        for ip in &addresses {
                            self.names.record(&name, *ip);
                        }
                        info!(target: "egress", "dns {name} -> {addresses:?}");
                        Answer::Addresses(addresses.into_iter().map(guest_side).collect())
                    }
                    Err(e) => {
                        info!(target: "egress", "dns {name}: {e}");
                        // getaddrinfo's EAI_NONAME / EAI_NODATA texts: the name has no address
                        // (NXDOMAIN to the guest); anything else is the resolver's failure.
                        if e.contains("not known") || e.contains("No address") {
                            Answer::NoSuchName
                        } else {
                            Answer::ServerFailure
                        }
                    }
                };
                self.reply_dns(to, &query, &answer);
            }
            Event::Inbound { stream, peer, port } => {
                let mut socket = new_tcp_socket();
                let local_port = self.next_ephemeral_port();
                let remote = (IpAddress::Ipv4(GUEST_IP), port.guest_port);
                let local = (IpAddress::Ipv4(GATEWAY_IP), local_port);
                match socket.connect(self.iface.context(), remote, local) {
                    Ok(()) => {
                        let handle = self.sockets.add(socket);
                        let label = format!("{peer} -> {} -> guest:{}", port.host, port.guest_port);
                        info!(target: "egress", "published {label}");
                        self.attach(handle, stream, label, None);
                    }
                    Err(e) => warn!("published port {}: {e}", port.host),
                }
            }
        }
    }

    fn next_ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        port
    }

    fn attach(
        &mut self,
        handle: SocketHandle,
        stream: TcpStream,
        label: String,
        flow: Option<Flow>,
    ) {
        let (to_host_tx, to_host_rx) = mpsc::channel(16);
        let (from_host_tx, from_host_rx) = mpsc::channel(16);
        tokio::spawn(copy_host_side(
            stream,
            to_host_rx,
            from_host_tx,
            Arc::clone(&self.wake),
        ));
        self.conns.insert(
            handle,
            Conn {
                label,
                flow,
                to_host: Some(to_host_tx),
                from_host: from_host_rx,
                unsent: Bytes::new(),
                host_done: false,
                closing: false,
                created: std::time::Instant::now(),
            },
        );
    }

    fn process(&mut self) {
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
        self.serve_dns();
        self.copy_connections();
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
    }

    fn serve_dns(&mut self) {
        let mut queries = Vec::new();
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
        while let Ok((payload, meta)) = socket.recv() {
            queries.push((payload.to_vec(), meta.endpoint));
        }
        for (query, from) in queries {
            self.answer_dns(query, from);
        }
    }

    fn answer_dns(&mut self, query: Vec<u8>, from: IpEndpoint) {
        let question = match dns::parse_query(&query) {
            Ok(question) => question,
            Err(e) => {
                debug!("dns from {from}: {e}");
                return;
            }
        };
        let name = question.name().to_owned();
        let fixed = if name == HOST_ALIAS {
            Some(Ipv4Addr::LOCALHOST)
        } else {
            self.config
                .hosts
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.ip)
        };
        let decision = if name == HOST_ALIAS {
            crate::policy::Decision::Allow("the gateway's own name".into())
        } else {
            self.config.policy.decide_name(&name)
        };
        if !decision.is_allowed() {
            info!(target: "egress", "dns {name}: {decision}");
            self.reply_dns(from, &query, &Answer::NoSuchName);
            return;
        }
        match question {
            Question::A(_) => match fixed {
                Some(ip) => {
                    self.names.record(&name, ip);
                    info!(target: "egress", "dns {name} -> {ip} (fixed)");
                    self.reply_dns(from, &query, &Answer::Addresses(vec![guest_side(ip)]));
                }
                None => {
                    let events = self.events_tx.clone();
                    tokio::spawn(async move {
                        let result = resolve(&name).await;
                        let _ = events
                            .send(Event::Resolved {
                                to: from,
                                query,
                                name,
                                result,
                            })
                            .await;
                    });
                }
            },
            Question::Aaaa(_) => self.reply_dns(from, &query, &Answer::Addresses(Vec::new())),
            Question::Other(_) => self.reply_dns(from, &query, &Answer::NotImplemented),
        }
    }

    fn reply_dns(&mut self, to: IpEndpoint, query: &[u8], answer: &Answer) {
        let reply = match dns::build_reply(query, answer) {
            Ok(reply) => reply,
            Err(e) => {
                debug!("dns reply to {to}: {e}");
                return;
            }
        };
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
        if let Err(e) = socket.send_slice(&reply, to) {
            debug!("dns reply to {to}: {e}");
        }
    }

    /// Moves bytes between every guest socket and its host connection; ends finished ones.
    fn copy_connections(&mut self) {
        let mut finished = Vec::new();
        for (&handle, conn) in self.conns.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            copy_guest_to_host(socket, conn);
            copy_host_to_guest(socket, conn);
            let state = socket.state();
            let stale_listener =
                state == tcp::State::Listen && conn.created.elapsed() > LISTEN_TIMEOUT;
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) || stale_listener {
                debug!("{}: done ({state})", conn.label);
                finished.push(handle);
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
    }
}

fn copy_guest_to_host(socket: &mut tcp::Socket, conn: &mut Conn) {
    let Some(to_host) = &conn.to_host else {
        return;
    };
    while socket.can_recv() {
        let permit = match to_host.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Full(())) => return,
            Err(TrySendError::Closed(())) => {
                debug!("{}: the host side failed; resetting", conn.label);
                socket.abort();
                return;
            }
        };
        match socket.recv(|data| {
            let n = data.len().min(CHUNK);
            (n, Bytes::copy_from_slice(&data[..n]))
        }) {
            Ok(chunk) if !chunk.is_empty() => permit.send(chunk),
            _ => break,
        }
    }
    let guest_finished = matches!(
        socket.state(),
        tcp::State::CloseWait
            | tcp::State::LastAck
            | tcp::State::Closing
            | tcp::State::TimeWait
            | tcp::State::Closed
    );
    if guest_finished && !socket.can_recv() {
        // Dropping the sender shuts down the host connection's write side.
        conn.to_host = None;
    }
}

fn copy_host_to_guest(socket: &mut tcp::Socket, conn: &mut Conn) {
    if !socket.may_send() {
        return;
    }
    loop {
        if conn.unsent.is_empty() {
            match conn.from_host.try_recv() {
                Ok(chunk) => conn.unsent = chunk,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    conn.host_done = true;
                    break;
                }
            }
        }
        match socket.send_slice(&conn.unsent) {
            Ok(n) => conn.unsent.advance(n),
            Err(_) => break,
        }
        if !conn.unsent.is_empty() {
            break;
        }
    }
    if conn.host_done && conn.unsent.is_empty() && !conn.closing {
        socket.close();
        conn.closing = true;
    }
}

fn new_tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

/// The IPv4 packet in an Ethernet frame, if it carries one.
fn ipv4_packet(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    Ipv4Packet::new_checked(ethernet.payload()).ok()
}

/// The flow of a TCP SYN (not SYN-ACK) in an Ethernet frame.
fn tcp_syn(frame: &[u8]) -> Option<Flow> {
    let ip = ipv4_packet(frame)?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if !tcp.syn() || tcp.ack() {
        return None;
    }
    Some(Flow {
        guest: SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
        dest: SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
    })
}

/// A guest packet the gateway does not forward (UDP other than to its DNS server, ICMP):
/// protocol name and destination (port 0 for ICMP).
fn unforwarded(frame: &[u8]) -> Option<(&'static str, SocketAddrV4)> {
    let ip = ipv4_packet(frame)?;
    let dest = ip.dst_addr();
    if dest.is_broadcast() || dest.is_multicast() {
        return None;
    }
    match ip.next_header() {
        IpProtocol::Udp => {
            let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).ok()?;
            let to_dns = dest == GATEWAY_IP && udp.dst_port() == 53;
            (!to_dns).then(|| ("udp", SocketAddrV4::new(dest, udp.dst_port())))
        }
        IpProtocol::Icmp if dest != GATEWAY_IP => Some(("icmp", SocketAddrV4::new(dest, 0))),
        _ => None,
    }
}

/// IPv4 addresses of `name` from the host's resolver.
async fn resolve(name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let lookup = tokio::net::lookup_host((name, 0));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => Err("the host's resolver timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addresses)) => {
            let mut v4: Vec<Ipv4Addr> = addresses
                .filter_map(|a| match a {
                    SocketAddr::V4(a) => Some(*a.ip()),
                    SocketAddr::V6(_) => None,
                })
                .collect();
            // getaddrinfo repeats each address per socket type; keep the first of each, in order.
            let mut seen = HashSet::new();
            v4.retain(|ip| seen.insert(*ip));
            Ok(v4)
        }
    }
}

/// Copies between a host connection and its guest socket's channels until both directions
/// are done or the gateway drops the connection.
async fn copy_host_side(
    stream: TcpStream,
    mut to_host: mpsc::Receiver<Bytes>,
    from_host: mpsc::Sender<Bytes>,
    wake: Arc<Notify>,
) {
    let _ = stream.set_nodelay(true);
    let (mut read_half, mut write_half) = stream.into_split();
    let reader = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            tokio::select! {
                _ = from_host.closed() => break,
                read = read_half.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if from_host.send(Bytes::copy_from_slice(&buffer[..n])).await.is_err() {
                            break;
                        }
                        wake.notify_one();
                    }
                },
            }
        }
        drop(from_host);
        wake.notify_one();
    };
    let writer = async {
        while let Some(chunk) = to_host.recv().await {
            if write_half.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
        // Wake the gateway: a failed write closed the channel it sends on.
        drop(to_host);
        wake.notify_one();
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(dest: Ipv4Addr, port: u16) -> Vec<u8> {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{EthernetRepr, Ipv4Repr, UdpPacket, UdpRepr};
        let payload = b"x";
        let udp = UdpRepr {
            src_port: 40000,
            dst_port: port,
        };
        let ip = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: dest,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let ethernet = EthernetRepr {
            src_addr: EthernetAddress(crate::config::GUEST_MAC),
            dst_addr: EthernetAddress(GATEWAY_MAC),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = vec![0; ethernet.buffer_len() + ip.buffer_len() + ip.payload_len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame);
        ethernet.emit(&mut eth);
        let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
        udp.emit(
            &mut datagram,
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(dest),
            payload.len(),
            |buf| buf.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        frame
    }

    #[test]
    fn udp_other_than_dns_is_reported_as_not_forwarded() {
        let ntp = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            unforwarded(&udp_frame(ntp, 123)),
            Some(("udp", SocketAddrV4::new(ntp, 123)))
        );
        assert_eq!(unforwarded(&udp_frame(GATEWAY_IP, 53)), None);
        assert_eq!(unforwarded(&[0u8; 10]), None);
    }

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
