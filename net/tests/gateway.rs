//! The gateway against a guest TCP/IP stack (smoltcp, configured as guest-init configures a
//! guest) over the same framed stream a VMM uses, with real host servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use krunbox_net::config::{GATEWAY_IP, GUEST_IP, GUEST_MAC, PREFIX_LEN};
use krunbox_net::device::QueueDevice;
use krunbox_net::framing::{read_frame, write_frame};
use krunbox_net::{Gateway, Limits, NetConfig};
use simple_dns::rdata::RData;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A guest: smoltcp on the far end of the gateway's stream.
struct Guest {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    frames: mpsc::Receiver<Vec<u8>>,
    writer: WriteHalf<DuplexStream>,
    next_port: u16,
}

impl Guest {
    async fn start(config: NetConfig) -> Self {
        Self::start_with(config, Limits::default()).await
    }

    async fn start_with(config: NetConfig, limits: Limits) -> Self {
        let (gateway_end, guest_end) = tokio::io::duplex(1 << 20);
        let published = krunbox_net::bind_published(&config).await.expect("bind");
        tokio::spawn(Gateway::with_limits(config, limits).run(gateway_end, published));
        let (mut reader, writer) = tokio::io::split(guest_end);
        let (tx, frames) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(frame)) = read_frame(&mut reader).await {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let mut device = QueueDevice::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut device,
            Instant::now(),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), PREFIX_LEN))
                .expect("address");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .expect("route");
        Self {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            frames,
            writer,
            next_port: 40000,
        }
    }

    /// Runs the guest's stack until `done` says so; panics after 10 s.
    async fn run_until(&mut self, mut done: impl FnMut(&mut SocketSet<'static>) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.iface
                .poll(Instant::now(), &mut self.device, &mut self.sockets);
            while let Some(frame) = self.device.tx.pop_front() {
                write_frame(&mut self.writer, &frame).await.expect("send");
            }
            if done(&mut self.sockets) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the guest's condition never came true"
            );
            if let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(10), self.frames.recv()).await
            {
                self.device.rx.push_back(frame);
            }
        }
    }

    fn connect(&mut self, ip: Ipv4Addr, port: u16) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        self.next_port += 1;
        socket
            .connect(
                self.iface.context(),
                (IpAddress::Ipv4(ip), port),
                self.next_port,
            )
            .expect("connect");
        self.sockets.add(socket)
    }

    /// Connects and waits for the handshake's outcome: whether it got established.
    async fn open(&mut self, ip: Ipv4Addr, port: u16) -> (SocketHandle, bool) {
        let handle = self.connect(ip, port);
        let mut established = false;
        self.run_until(|s| {
            let socket = s.get_mut::<tcp::Socket>(handle);
            established |= socket.state() == tcp::State::Established;
            socket.state() == tcp::State::Established || socket.state() == tcp::State::Closed
        })
        .await;
        (handle, established)
    }

    /// Sends raw frames as the guest's card would (bypassing the guest's stack).
    async fn send_raw(&mut self, frame: &[u8]) {
        write_frame(&mut self.writer, frame).await.expect("send");
    }

    /// Connects, then reads until the peer closes; `None` if the connection was refused.
    async fn fetch(&mut self, ip: Ipv4Addr, port: u16, send: &[u8]) -> Option<Vec<u8>> {
        let (handle, established) = self.open(ip, port).await;
        if !established {
            return None;
        }
        let mut received = Vec::new();
        let mut sent = false;
        self.run_until(|s| {
            let socket = s.get_mut::<tcp::Socket>(handle);
            if !sent && socket.can_send() {
                socket.send_slice(send).expect("send");
                socket.close();
                sent = true;
            }
            while socket.can_recv() {
                socket
                    .recv(|d| {
                        received.extend_from_slice(d);
                        (d.len(), ())
                    })
                    .expect("recv");
            }
            !socket.may_recv() && sent
        })
        .await;
        Some(received)
    }

    async fn resolve(&mut self, name: &str) -> (simple_dns::RCODE, Vec<Ipv4Addr>) {
        let handle = self.send_query(name);
        self.await_reply(handle).await
    }

    /// Sends an A query for `name` from a fresh socket (whose handle waits for the reply).
    fn send_query(&mut self, name: &str) -> SocketHandle {
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        self.next_port += 1;
        socket.bind(self.next_port).expect("bind");
        let mut query = simple_dns::Packet::new_query(7);
        query.questions.push(simple_dns::Question::new(
            simple_dns::Name::new_unchecked(name),
            simple_dns::QTYPE::TYPE(simple_dns::TYPE::A),
            simple_dns::QCLASS::CLASS(simple_dns::CLASS::IN),
            false,
        ));
        socket
            .send_slice(
                &query.build_bytes_vec().expect("query"),
                IpEndpoint::new(IpAddress::Ipv4(GATEWAY_IP), 53),
            )
            .expect("send");
        self.sockets.add(socket)
    }

    /// The reply to the query `handle` sent: its code and addresses.
    async fn await_reply(&mut self, handle: SocketHandle) -> (simple_dns::RCODE, Vec<Ipv4Addr>) {
        let mut reply = Vec::new();
        self.run_until(|s| {
            let socket = s.get_mut::<udp::Socket>(handle);
            if let Ok((data, _)) = socket.recv() {
                reply = data.to_vec();
            }
            !reply.is_empty()
        })
        .await;
        let packet = simple_dns::Packet::parse(&reply).expect("reply");
        let addresses = packet
            .answers
            .iter()
            .filter_map(|a| match &a.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect();
        (packet.rcode(), addresses)
    }
}

/// A server on 127.0.0.1 that greets, then echoes what it reads until EOF.
async fn greeter(greeting: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(greeting.as_bytes()).await;
                let mut buffer = Vec::new();
                let _ = stream.read_to_end(&mut buffer).await;
                let _ = stream.write_all(&buffer).await;
            });
        }
    });
    port
}

fn config(args: &[(&str, &str)]) -> NetConfig {
    let mut config = NetConfig::default();
    for (flag, value) in args {
        match *flag {
            "allow-net" => config.policy.allow_nets.push(value.parse().expect("rule")),
            "allow-host" => config.policy.allow_hosts.push(value.parse().expect("rule")),
            "add-host" => config.hosts.push(value.parse().expect("host")),
            "publish" => config.publish.push(value.parse().expect("port")),
            other => panic!("{other}"),
        }
    }
    config
}

#[tokio::test]
async fn default_policy_refuses_the_hosts_loopback() {
    let port = greeter("hello\n").await;
    let mut guest = Guest::start(NetConfig::default()).await;
    assert_eq!(guest.fetch(GATEWAY_IP, port, b"x").await, None);
}

#[tokio::test]
async fn allowlisted_port_is_reachable_and_others_are_refused() {
    let allowed = greeter("allowed\n").await;
    let denied = greeter("denied\n").await;
    let rule = format!("127.0.0.1/32:{allowed}");
    let mut guest = Guest::start(config(&[("allow-net", &rule)])).await;
    let reply = guest
        .fetch(GATEWAY_IP, allowed, b"ping")
        .await
        .expect("allowed connection");
    assert_eq!(reply, b"allowed\nping");
    assert_eq!(guest.fetch(GATEWAY_IP, denied, b"x").await, None);
    // A closed host port is refused too (the host side's connect fails first).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut guest = Guest::start(config(&[("allow-net", &format!("127.0.0.1:{closed}"))])).await;
    assert_eq!(guest.fetch(GATEWAY_IP, closed, b"x").await, None);
}

#[tokio::test]
async fn dns_answers_allowed_names_and_hides_the_rest() {
    let port = greeter("by name\n").await;
    let mut guest = Guest::start(config(&[
        ("add-host", "service.test:127.0.0.1"),
        ("add-host", "other.test:127.0.0.1"),
        ("allow-host", &format!("service.test:{port}")),
    ]))
    .await;
    let (rcode, addresses) = guest.resolve("service.test").await;
    assert_eq!(rcode, simple_dns::RCODE::NoError);
    assert_eq!(addresses, vec![GATEWAY_IP]);
    let (rcode, addresses) = guest.resolve("other.test").await;
    assert_eq!(rcode, simple_dns::RCODE::NameError);
    assert!(addresses.is_empty());
    let (_, alias) = guest.resolve("host.krunbox.internal").await;
    assert_eq!(alias, vec![GATEWAY_IP]);
    // The name made its address reachable, on the rule's port only.
    let reply = guest.fetch(GATEWAY_IP, port, b"!").await.expect("allowed");
    assert_eq!(reply, b"by name\n!");
    let other = greeter("other\n").await;
    assert_eq!(guest.fetch(GATEWAY_IP, other, b"x").await, None);
}

#[tokio::test]
async fn published_port_reaches_a_guest_server() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host_port = probe.local_addr().expect("addr").port();
    drop(probe);
    let mut guest = Guest::start(config(&[("publish", &format!("{host_port}:80"))])).await;
    let mut listener = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    );
    listener.listen(80).expect("listen");
    let handle = guest.sockets.add(listener);
    let client = tokio::spawn(async move {
        let address: SocketAddr = format!("127.0.0.1:{host_port}").parse().expect("addr");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("read");
        reply
    });
    let mut sent = false;
    guest
        .run_until(|s| {
            let socket = s.get_mut::<tcp::Socket>(handle);
            if !sent && socket.can_send() {
                socket.send_slice(b"from the guest").expect("send");
                socket.close();
                sent = true;
            }
            sent && socket.state() != tcp::State::Established && !socket.may_send()
        })
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            guest.run_until(|_| true).await;
            if client.is_finished() {
                return client.await.expect("client");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the host client finished");
    assert_eq!(reply, "from the guest");
}

/// A server on 127.0.0.1 that reports on `ended` when each connection's peer has closed it
/// (what the gateway does to the host side of a connection it ends).
async fn watcher() -> (u16, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let _ = stream.read_to_end(&mut buffer).await;
                let _ = ended_tx.send(());
            });
        }
    });
    (port, ended)
}

#[tokio::test]
async fn past_the_connection_cap_the_next_syn_is_reset() {
    let port = greeter("hi\n").await;
    let limits = Limits {
        max_guest_connections: 2,
        ..Limits::default()
    };
    let rule = format!("127.0.0.1/32:{port}");
    let mut guest = Guest::start_with(config(&[("allow-net", &rule)]), limits).await;
    let (first, ok) = guest.open(GATEWAY_IP, port).await;
    assert!(ok, "the first connection");
    let (_second, ok) = guest.open(GATEWAY_IP, port).await;
    assert!(ok, "the second connection");
    let (_third, ok) = guest.open(GATEWAY_IP, port).await;
    assert!(
        !ok,
        "the third connection is past the cap and must be reset"
    );
    // Once one closes there is room again.
    guest.sockets.get_mut::<tcp::Socket>(first).close();
    guest
        .run_until(|s| {
            s.get_mut::<tcp::Socket>(first).state() == tcp::State::Closed
                || s.get_mut::<tcp::Socket>(first).state() == tcp::State::TimeWait
        })
        .await;
    let mut reopened = false;
    for _ in 0..50 {
        let (_, ok) = guest.open(GATEWAY_IP, port).await;
        if ok {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened, "a connection after one closed");
}

#[tokio::test]
async fn an_idle_connection_is_reset_and_its_host_side_closed() {
    let (port, mut ended) = watcher().await;
    let idle = Duration::from_millis(300);
    let limits = Limits {
        idle_timeout: idle,
        ..Limits::default()
    };
    let rule = format!("127.0.0.1/32:{port}");
    let mut guest = Guest::start_with(config(&[("allow-net", &rule)]), limits).await;
    let started = tokio::time::Instant::now();
    let (handle, ok) = guest.open(GATEWAY_IP, port).await;
    assert!(ok, "connected");
    guest
        .run_until(|s| s.get_mut::<tcp::Socket>(handle).state() == tcp::State::Closed)
        .await;
    assert!(started.elapsed() >= idle, "reset before the idle timeout");
    tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("the host side was closed")
        .expect("a report");
}

#[tokio::test]
async fn a_guest_that_never_completes_its_handshake_is_dropped() {
    let (port, mut ended) = watcher().await;
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let rule = format!("127.0.0.1/32:{port}");
    let mut guest = Guest::start_with(config(&[("allow-net", &rule)]), limits).await;
    // A bare SYN, never followed by the handshake's ACK.
    guest.send_raw(&syn_frame(GATEWAY_IP, port)).await;
    tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("the half-open connection's host side was closed")
        .expect("a report");
}

/// A guest's TCP SYN to `dest:port` as an Ethernet frame.
fn syn_frame(dest: Ipv4Addr, port: u16) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};
    let tcp = TcpRepr {
        src_port: 45678,
        dst_port: port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 65535,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    krunbox_net::inspect::guest_ipv4_frame(dest, IpProtocol::Tcp, tcp.buffer_len(), |bytes| {
        tcp.emit(
            &mut TcpPacket::new_unchecked(bytes),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(dest),
            &ChecksumCapabilities::default(),
        );
    })
}

/// A real DNS server on 127.0.0.1 whose answer for evil.test is internal: the host's
/// loopback and the cloud metadata address.
fn rebinding_server() -> std::net::SocketAddr {
    let records = [(
        "evil.test".to_owned(),
        vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(169, 254, 169, 254)],
    )];
    krunbox_net::static_dns::serve(records.into_iter().collect(), Duration::from_secs(1))
        .expect("dns server")
}

#[tokio::test]
async fn a_rebinding_answer_is_refused_unless_a_net_rule_names_it() {
    let port = greeter("internal\n").await;
    let server = rebinding_server();
    // An allowed name whose answer is internal: nothing of it reaches the guest.
    let mut refused = config(&[("allow-host", "evil.test")]);
    refused.dns_server = Some(server);
    let mut guest = Guest::start(refused).await;
    let (rcode, addresses) = guest.resolve("evil.test").await;
    assert_eq!(rcode, simple_dns::RCODE::NoError);
    assert!(addresses.is_empty(), "{addresses:?}");
    assert_eq!(guest.fetch(GATEWAY_IP, port, b"x").await, None);
    // The open policy hands out no internal answer either.
    let open = NetConfig {
        dns_server: Some(server),
        ..NetConfig::default()
    };
    let mut guest = Guest::start(open).await;
    let (_, addresses) = guest.resolve("evil.test").await;
    assert!(addresses.is_empty(), "{addresses:?}");
    // An --allow-net rule for the address lets that address (not the metadata one) through,
    // and only on the rule's port.
    let net_rule = format!("127.0.0.1/32:{port}");
    let mut allowed = config(&[("allow-host", "evil.test"), ("allow-net", &net_rule)]);
    allowed.dns_server = Some(server);
    let mut guest = Guest::start(allowed).await;
    let (_, addresses) = guest.resolve("evil.test").await;
    assert_eq!(addresses, vec![GATEWAY_IP]);
    let reply = guest.fetch(GATEWAY_IP, port, b"!").await.expect("allowed");
    assert_eq!(reply, b"internal\n!");
    let other = greeter("other\n").await;
    assert_eq!(
        guest.fetch(GATEWAY_IP, other, b"x").await,
        None,
        "the name allows no other port"
    );
}

#[tokio::test]
async fn past_the_dns_cap_a_query_is_answered_servfail_at_once() {
    // A DNS server that never answers: every query the gateway sends it stays pending.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        max_pending_dns: 1,
        resolve_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let config = NetConfig {
        dns_server: Some(silent.local_addr().expect("addr")),
        ..NetConfig::default()
    };
    let mut guest = Guest::start_with(config, limits).await;
    let pending = guest.send_query("slow.test");
    guest.run_until(|_| true).await;
    let started = tokio::time::Instant::now();
    let (rcode, _) = guest.resolve("next.test").await;
    assert_eq!(rcode, simple_dns::RCODE::ServerFailure);
    assert!(
        started.elapsed() < limits.resolve_timeout,
        "answered at once, not after the pending query's timeout"
    );
    // The pending one ends with the resolver's timeout, also SERVFAIL.
    let (rcode, _) = guest.await_reply(pending).await;
    assert_eq!(rcode, simple_dns::RCODE::ServerFailure);
}

#[tokio::test]
async fn past_the_published_cap_a_connection_is_closed_on_accept() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host_port = probe.local_addr().expect("addr").port();
    drop(probe);
    let limits = Limits {
        max_inbound_connections: 1,
        ..Limits::default()
    };
    let config = config(&[("publish", &format!("{host_port}:80"))]);
    let mut guest = Guest::start_with(config, limits).await;
    let mut listener = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    );
    listener.listen(80).expect("listen");
    let handle = guest.sockets.add(listener);
    let address: SocketAddr = format!("127.0.0.1:{host_port}").parse().expect("addr");
    let mut first = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    guest
        .run_until(|s| s.get_mut::<tcp::Socket>(handle).state() == tcp::State::Established)
        .await;
    let mut second = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            guest.run_until(|_| true).await;
            let mut byte = [0u8; 1];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(20), second.read(&mut byte)).await
            {
                return n;
            }
        }
    })
    .await
    .expect("the second connection was closed");
    assert_eq!(closed, 0);
    // The first one is still open.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), first.read(&mut byte))
            .await
            .is_err(),
        "the first connection must stay open"
    );
}
