//! The agent's side of the protocol contract, spoken frame by frame over a raw socket: the
//! handshake, ping, and the answers to requests it cannot serve.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::TestAgent;
use futures_util::{SinkExt, StreamExt};
use krunbox_protocol::frame::FrameCodec;
use krunbox_protocol::generation::{CURRENT_GENERATION, OLDEST_GENERATION};
use krunbox_protocol::messages::{
    Body, Envelope, ErrorKind, ExecRequest, Hello, Ping, SignalRequest, StdinData,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

type Connection = Framed<UnixStream, FrameCodec>;

async fn connect(agent: &TestAgent) -> Connection {
    // The client waits for the socket; a raw connection after that cannot race the bind.
    drop(agent.client().await);
    let stream = UnixStream::connect(&agent.socket).await.unwrap();
    Framed::new(stream, FrameCodec::new())
}

async fn next(conn: &mut Connection) -> Option<Envelope> {
    tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .expect("an answer in time")
        .map(|frame| frame.expect("a well-formed frame"))
}

async fn hello(conn: &mut Connection, min: u32, max: u32) -> Option<Envelope> {
    let hello = Hello {
        min_generation: min,
        max_generation: max,
        peer: "protocol_edges test".into(),
    };
    conn.send(Envelope::new(0, Body::Hello(hello)))
        .await
        .unwrap();
    next(conn).await
}

async fn handshaken(agent: &TestAgent) -> Connection {
    let mut conn = connect(agent).await;
    match hello(&mut conn, OLDEST_GENERATION, CURRENT_GENERATION + 5).await {
        Some(Envelope {
            body: Some(Body::HelloAck(ack)),
            ..
        }) => assert_eq!(
            ack.generation, CURRENT_GENERATION,
            "newest common generation"
        ),
        other => panic!("expected HelloAck, got {other:?}"),
    }
    conn
}

fn expect_error(frame: Option<Envelope>, id: u64, kind: ErrorKind) -> String {
    match frame {
        Some(Envelope {
            id: got,
            body: Some(Body::Error(err)),
        }) if got == id => {
            assert_eq!(err.kind(), kind, "{}", err.message);
            err.message
        }
        other => panic!("expected a {kind:?} error for id {id}, got {other:?}"),
    }
}

#[tokio::test]
async fn no_common_generation_is_refused_with_an_error() {
    let agent = TestAgent::start();
    let mut conn = connect(&agent).await;
    let answer = hello(&mut conn, CURRENT_GENERATION + 1, CURRENT_GENERATION + 3).await;
    let message = expect_error(answer, 0, ErrorKind::Unsupported);
    assert!(!message.is_empty());
    assert!(
        next(&mut conn).await.is_none(),
        "connection closed after the refusal"
    );
}

#[tokio::test]
async fn ping_is_answered_with_the_nonce_and_uptime() {
    let agent = TestAgent::start();
    let mut conn = handshaken(&agent).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.send(Envelope::new(7, Body::Ping(Ping { nonce: 0xfeed })))
        .await
        .unwrap();
    match next(&mut conn).await {
        Some(Envelope {
            id: 7,
            body: Some(Body::Pong(pong)),
        }) => {
            assert_eq!(pong.nonce, 0xfeed);
            assert!(pong.uptime_ms >= 50, "uptime {}", pong.uptime_ms);
        }
        other => panic!("expected Pong, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_the_agent_cannot_serve_get_errors_for_their_id() {
    let agent = TestAgent::start();
    let mut conn = handshaken(&agent).await;

    // A body from a newer generation (an unknown oneof field) decodes as no body.
    let unknown_body = [0, 0, 0, 5, 0x08, 0x05, 0x9a, 0x06, 0x00];
    conn.get_mut().write_all(&unknown_body).await.unwrap();
    expect_error(next(&mut conn).await, 5, ErrorKind::Unsupported);

    // A frame only the agent sends.
    conn.send(Envelope::new(6, Body::Ping(Ping { nonce: 1 })))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut conn).await,
        Some(Envelope {
            id: 6,
            body: Some(Body::Pong(_))
        })
    ));
    let pong = Body::Pong(krunbox_protocol::messages::Pong {
        nonce: 1,
        uptime_ms: 0,
    });
    conn.send(Envelope::new(8, pong)).await.unwrap();
    expect_error(next(&mut conn).await, 8, ErrorKind::Unsupported);

    // Data for an operation that does not exist.
    let data = Body::StdinData(StdinData {
        data: b"x"[..].into(),
    });
    conn.send(Envelope::new(9, data)).await.unwrap();
    let message = expect_error(next(&mut conn).await, 9, ErrorKind::UnknownOperation);
    assert!(message.contains('9'), "names the id: {message}");

    // A second operation under an id still in use.
    let sleeper = ExecRequest {
        argv: vec!["sleep".into(), "30".into()],
        ..Default::default()
    };
    conn.send(Envelope::new(10, Body::Exec(sleeper.clone())))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut conn).await,
        Some(Envelope {
            id: 10,
            body: Some(Body::ExecStarted(_))
        })
    ));
    conn.send(Envelope::new(10, Body::Exec(sleeper)))
        .await
        .unwrap();
    expect_error(next(&mut conn).await, 10, ErrorKind::UnknownOperation);

    // The first exec with that id is unaffected and still controllable.
    conn.send(Envelope::new(
        10,
        Body::Signal(SignalRequest {
            signal: libc::SIGKILL,
        }),
    ))
    .await
    .unwrap();
    let mut eofs = 0;
    loop {
        match next(&mut conn).await {
            Some(Envelope {
                id: 10,
                body: Some(Body::Output(chunk)),
            }) => {
                assert!(chunk.eof && chunk.data.is_empty());
                eofs += 1;
            }
            Some(Envelope {
                id: 10,
                body: Some(Body::Exit(status)),
            }) => {
                assert_eq!(eofs, 2, "both streams ended before Exit");
                assert_eq!(status.shell_code(), 128 + libc::SIGKILL);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
