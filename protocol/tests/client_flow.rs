//! The client against a scripted agent on an in-memory stream: handshake outcomes, flow
//! control and connection loss. (The real agent is exercised in guest-init's tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use krunbox_protocol::client::{Client, ClientError, ExecSpec};
use krunbox_protocol::flow::{frame_cost, FRAME_CHARGE};
use krunbox_protocol::frame::FrameCodec;
use krunbox_protocol::generation::CURRENT_GENERATION;
use krunbox_protocol::messages::*;
use krunbox_protocol::INITIAL_WINDOW;
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;

type Peer = Framed<DuplexStream, FrameCodec>;

async fn scripted_agent(
    generation: u32,
) -> (tokio::task::JoinHandle<Result<Client, ClientError>>, Peer) {
    let (host_side, agent_side) = tokio::io::duplex(8 * 1024 * 1024);
    let client = tokio::spawn(Client::handshake(host_side));
    let mut peer = Framed::new(agent_side, FrameCodec::new());
    let hello = peer
        .next()
        .await
        .expect("hello frame")
        .expect("valid frame");
    assert!(
        matches!(hello.body, Some(Body::Hello(_))),
        "first frame is Hello, got {}",
        hello.kind()
    );
    peer.send(Envelope::new(
        0,
        Body::HelloAck(HelloAck {
            generation,
            agent_version: "test".into(),
            features: vec![],
            ..Default::default()
        }),
    ))
    .await
    .expect("send ack");
    (client, peer)
}

/// Starts `spec` on `client` and answers as the agent with ExecStarted; returns the exec id.
async fn start_exec(
    client: &Client,
    peer: &mut Peer,
    spec: ExecSpec,
) -> (u64, krunbox_protocol::client::Execution) {
    let exec = tokio::spawn({
        let client = client.clone();
        async move { client.exec(spec).await }
    });
    let request = peer.next().await.expect("exec frame").expect("valid");
    assert!(
        matches!(request.body, Some(Body::Exec(_))),
        "expected Exec, got {}",
        request.kind()
    );
    peer.send(Envelope::new(
        request.id,
        Body::ExecStarted(ExecStarted { pid: 1 }),
    ))
    .await
    .expect("send");
    (request.id, exec.await.expect("join").expect("exec started"))
}

#[tokio::test]
async fn handshake_refuses_an_agent_of_an_unknown_generation() {
    let (client, _peer) = scripted_agent(99).await;
    match client.await.expect("join") {
        Err(ClientError::Generation(err)) => assert_eq!(err.agent_min, 99),
        Err(other) => panic!("expected a generation error, got {other}"),
        Ok(_) => panic!("expected a generation error, got a client"),
    }
}

#[tokio::test]
async fn stdin_never_exceeds_the_granted_window() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");

    let (id, mut exec) = start_exec(&client, &mut peer, ExecSpec::new(["cat"]).stdin(true)).await;
    let mut stdin = exec.take_stdin().expect("stdin requested");

    let total = INITIAL_WINDOW as usize * 3;
    let writer = tokio::spawn(async move {
        stdin.write(&vec![b'x'; total]).await.expect("write");
        stdin
    });

    // Without a grant, the initial window arrives (payload plus each frame's charge) and then
    // the client waits.
    let mut received = 0usize;
    let mut spent = 0u64;
    while spent + u64::from(FRAME_CHARGE) < u64::from(INITIAL_WINDOW) {
        let frame = peer.next().await.expect("frame").expect("valid");
        if let Some(Body::StdinData(data)) = frame.body {
            received += data.data.len();
            spent += u64::from(frame_cost(data.data.len()));
        }
    }
    assert_eq!(spent, u64::from(INITIAL_WINDOW));
    let stalled = tokio::time::timeout(Duration::from_millis(200), peer.next()).await;
    assert!(
        stalled.is_err(),
        "client sent beyond its window: {stalled:?}"
    );

    // Granting the rest (with room for every frame's charge) lets the write finish.
    peer.send(Envelope::new(
        id,
        Body::Window(WindowUpdate {
            bytes: (total - received) as u32 * 2,
        }),
    ))
    .await
    .expect("grant");
    while received < total {
        let frame = peer.next().await.expect("frame").expect("valid");
        if let Some(Body::StdinData(data)) = frame.body {
            received += data.data.len();
        }
    }
    assert_eq!(received, total);
    writer.await.expect("writer finished");
}

#[tokio::test]
async fn output_is_acknowledged_as_it_is_consumed() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");
    let (id, mut exec) = start_exec(&client, &mut peer, ExecSpec::new(["yes"])).await;

    // 32 frames whose cost (payload plus charge) fills the window exactly.
    let chunks = 32;
    let chunk = vec![b'y'; (INITIAL_WINDOW / chunks - FRAME_CHARGE) as usize];
    for _ in 0..chunks {
        peer.send(Envelope::new(
            id,
            Body::Output(OutputChunk {
                stream: OutputStream::Stdout as i32,
                data: chunk.clone().into(),
                eof: false,
            }),
        ))
        .await
        .expect("send output");
    }
    let mut consumed = 0usize;
    while consumed < chunks as usize * chunk.len() {
        match exec.next_event().await.expect("event") {
            Some(krunbox_protocol::client::ExecEvent::Output { data, .. }) => {
                consumed += data.len()
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let mut granted = 0u64;
    while granted < u64::from(INITIAL_WINDOW) {
        let frame = tokio::time::timeout(Duration::from_secs(2), peer.next())
            .await
            .expect("window update arrives")
            .expect("frame")
            .expect("valid");
        match frame.body {
            Some(Body::Window(update)) => granted += u64::from(update.bytes),
            other => panic!("expected window updates, got {other:?}"),
        }
    }
    assert_eq!(granted, u64::from(INITIAL_WINDOW));
}

#[tokio::test]
async fn output_beyond_the_window_aborts_the_operation() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");
    let (id, mut exec) = start_exec(&client, &mut peer, ExecSpec::new(["yes"])).await;
    // Nothing is consumed, so no credit returns: one chunk past the window is an overrun.
    let chunk = vec![b'y'; (64 * 1024 - FRAME_CHARGE) as usize];
    let fitting = INITIAL_WINDOW / frame_cost(chunk.len());
    for _ in 0..=fitting {
        peer.send(Envelope::new(
            id,
            Body::Output(OutputChunk {
                stream: OutputStream::Stdout as i32,
                data: chunk.clone().into(),
                eof: false,
            }),
        ))
        .await
        .expect("send");
    }
    let mut delivered = 0usize;
    let err = loop {
        match exec.next_event().await {
            Ok(Some(krunbox_protocol::client::ExecEvent::Output { data, .. })) => {
                delivered += data.len()
            }
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => break err,
        }
    };
    assert_eq!(
        delivered,
        fitting as usize * chunk.len(),
        "everything within the window is delivered"
    );
    assert_eq!(
        err.remote_kind(),
        Some(ErrorKind::ProtocolViolation),
        "{err}"
    );
}

/// A hostile agent floods empty output frames, which carry no payload to count: each still
/// costs its charge, so the client queues at most `INITIAL_WINDOW / FRAME_CHARGE` of them and
/// aborts the operation at the next one.
#[tokio::test]
async fn a_flood_of_empty_frames_is_bounded_by_the_window() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");
    let (id, mut exec) = start_exec(&client, &mut peer, ExecSpec::new(["yes"])).await;
    let fitting = INITIAL_WINDOW / FRAME_CHARGE;
    let flood = tokio::spawn(async move {
        for _ in 0..fitting * 4 {
            let frame = Envelope::new(
                id,
                Body::Output(OutputChunk {
                    stream: OutputStream::Stdout as i32,
                    data: Default::default(),
                    eof: false,
                }),
            );
            if peer.send(frame).await.is_err() {
                break;
            }
        }
        peer
    });
    let _peer = flood.await.expect("flood");
    let mut queued = 0u32;
    let err = loop {
        match exec.next_event().await {
            Ok(Some(krunbox_protocol::client::ExecEvent::Output { data, .. })) => {
                assert!(data.is_empty());
                queued += 1;
            }
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => break err,
        }
    };
    assert_eq!(
        queued, fitting,
        "the frames within the window are delivered"
    );
    assert_eq!(
        err.remote_kind(),
        Some(ErrorKind::ProtocolViolation),
        "{err}"
    );
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_operations() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    let _ = peer.next().await;
    drop(peer);
    match ping.await.expect("join") {
        Err(ClientError::ConnectionClosed { operation }) => assert_eq!(operation, "ping"),
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_errors_surface_with_their_kind() {
    let (client, mut peer) = scripted_agent(CURRENT_GENERATION).await;
    let client = client.await.expect("join").expect("handshake");
    let stat = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/missing").await }
    });
    let id = peer.next().await.expect("file").expect("valid").id;
    peer.send(Envelope::new(
        id,
        Body::Error(ErrorReply::new(
            ErrorKind::NotFound,
            "/missing: no such file",
        )),
    ))
    .await
    .expect("send");
    let err = stat.await.expect("join").expect_err("stat fails");
    assert_eq!(err.remote_kind(), Some(ErrorKind::NotFound));
    assert!(err.to_string().contains("/missing"), "{err}");
}

#[tokio::test]
async fn a_connection_that_never_answers_does_not_use_up_the_whole_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let agent = tokio::spawn(async move {
        // The first connection is accepted and then left silent, as a VMM does whose guest
        // lost the connection request; the second one is answered.
        let (silent, _) = listener.accept().await.expect("accept");
        let (answered, _) = listener.accept().await.expect("accept");
        let mut peer = Framed::new(answered, FrameCodec::new());
        let hello = peer.next().await.expect("hello").expect("valid");
        assert!(matches!(hello.body, Some(Body::Hello(_))));
        peer.send(Envelope::new(
            0,
            Body::HelloAck(HelloAck {
                generation: *krunbox_protocol::generation::SUPPORTED.end(),
                agent_version: "test".into(),
                features: vec![],
                ..Default::default()
            }),
        ))
        .await
        .expect("send ack");
        (silent, peer)
    });
    let address = krunbox_protocol::transport::AgentAddress::Unix(path);
    let started = std::time::Instant::now();
    let client = Client::connect_with_retry(&address, Duration::from_secs(60)).await;
    assert!(client.is_ok(), "{:?}", client.err().map(|e| e.to_string()));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the silent connection held the wait for {:?}",
        started.elapsed()
    );
    drop(agent.await.expect("agent"));
}

/// An agent of a generation the host no longer speaks refuses the handshake: the host says
/// so at once instead of asking again until its boot wait is over.
#[tokio::test]
async fn an_agent_that_refuses_the_handshake_is_not_asked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let agent = tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((conn, _)) = listener.accept().await {
            connections += 1;
            let mut peer = Framed::new(conn, FrameCodec::new());
            let _hello = peer.next().await;
            let reply = ErrorReply::new(
                ErrorKind::Unsupported,
                "no common protocol generation: host speaks 2..=2, agent speaks 1..=1",
            );
            let _ = peer.send(Envelope::new(0, Body::Error(reply))).await;
            if connections > 1 {
                return connections;
            }
        }
        connections
    });
    let address = krunbox_protocol::transport::AgentAddress::Unix(path);
    let started = std::time::Instant::now();
    let err = Client::connect_with_retry(&address, Duration::from_secs(60))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.remote_kind(), Some(ErrorKind::Unsupported), "{err}");
    assert!(err.to_string().contains("generation"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    agent.abort();
}
