//! Freezes each protocol generation's wire format.
//!
//! `generations/gen1.txt` holds the encoding of one representative value of every message of
//! generation 1. An agent baked into an old image speaks exactly these bytes; if a change to
//! `messages/` alters any of them, this test fails: add a new generation instead (new fields
//! with new tags are compatible; changed tags or types are not).
//!
//! To record a NEW generation's file, run with `KRUNBOX_BLESS_GENERATION=<n>`; an existing
//! file is never rewritten.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;

use krunbox_protocol::messages::*;
use prost::Message;

fn generation_one_samples() -> Vec<(&'static str, Envelope)> {
    let env = |id, body| Envelope::new(id, body);
    vec![
        (
            "hello",
            env(
                0,
                Body::Hello(Hello {
                    min_generation: 1,
                    max_generation: 3,
                    peer: "host".into(),
                }),
            ),
        ),
        (
            "hello_ack",
            env(
                0,
                Body::HelloAck(HelloAck {
                    generation: 1,
                    agent_version: "0.1.0".into(),
                    features: vec!["pty".into(), "files".into()],
                    ..Default::default()
                }),
            ),
        ),
        ("ping", env(5, Body::Ping(Ping { nonce: 77 }))),
        (
            "pong",
            env(
                5,
                Body::Pong(Pong {
                    nonce: 77,
                    uptime_ms: 1234,
                }),
            ),
        ),
        (
            "exec",
            env(
                9,
                Body::Exec(ExecRequest {
                    argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: vec![EnvVar {
                        key: "A".into(),
                        value: "b".into(),
                    }],
                    cwd: "/tmp".into(),
                    uid: Some(1000),
                    gid: Some(0),
                    timeout_ms: 5000,
                    stdin: true,
                    pty: Some(PtySize { rows: 24, cols: 80 }),
                    term: "xterm".into(),
                    power_off_on_exit: true,
                    rlimits: Vec::new(),
                    capabilities: None,
                    no_new_privileges: false,
                    kill_leftovers_on_exit: false,
                    groups: Vec::new(),
                }),
            ),
        ),
        (
            "exec_started",
            env(9, Body::ExecStarted(ExecStarted { pid: 42 })),
        ),
        (
            "stdin_data",
            env(
                9,
                Body::StdinData(StdinData {
                    data: b"input".to_vec().into(),
                }),
            ),
        ),
        ("stdin_close", env(9, Body::StdinClose(StdinClose {}))),
        (
            "output",
            env(
                9,
                Body::Output(OutputChunk {
                    stream: OutputStream::Stderr as i32,
                    data: b"err".to_vec().into(),
                    eof: true,
                }),
            ),
        ),
        (
            "resize",
            env(
                9,
                Body::Resize(PtyResize {
                    size: Some(PtySize {
                        rows: 50,
                        cols: 132,
                    }),
                }),
            ),
        ),
        ("signal", env(9, Body::Signal(SignalRequest { signal: 15 }))),
        (
            "exit_code",
            env(
                9,
                Body::Exit(ExitStatus {
                    outcome: Some(Outcome::Code(3)),
                    timed_out: false,
                }),
            ),
        ),
        (
            "exit_signal",
            env(
                9,
                Body::Exit(ExitStatus {
                    outcome: Some(Outcome::Signal(9)),
                    timed_out: true,
                }),
            ),
        ),
        (
            "exit_spawn_failed",
            env(
                9,
                Body::Exit(ExitStatus {
                    outcome: Some(Outcome::SpawnFailed(SpawnFailure {
                        stage: SpawnStage::Exec as i32,
                        errno: 2,
                        message: "nope".into(),
                    })),
                    timed_out: false,
                }),
            ),
        ),
        (
            "file_write",
            env(
                11,
                Body::File(FileRequest {
                    root: "/w".into(),
                    path: "a/b".into(),
                    op: Some(FileOp::Write(WriteOp {
                        mode: 0o640,
                        create_parents: true,
                    })),
                }),
            ),
        ),
        (
            "file_read",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/etc/x".into(),
                    op: Some(FileOp::Read(ReadOp {})),
                }),
            ),
        ),
        (
            "file_stat",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/x".into(),
                    op: Some(FileOp::Stat(StatOp {})),
                }),
            ),
        ),
        (
            "file_list",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/".into(),
                    op: Some(FileOp::List(ListOp {})),
                }),
            ),
        ),
        (
            "file_mkdir",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/d".into(),
                    op: Some(FileOp::Mkdir(MkdirOp { mode: 0o700 })),
                }),
            ),
        ),
        (
            "file_remove",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/d".into(),
                    op: Some(FileOp::Remove(RemoveOp { recursive: true })),
                }),
            ),
        ),
        (
            "file_rename",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/a".into(),
                    op: Some(FileOp::Rename(RenameOp { to: "/b".into() })),
                }),
            ),
        ),
        (
            "file_chmod",
            env(
                11,
                Body::File(FileRequest {
                    root: String::new(),
                    path: "/a".into(),
                    op: Some(FileOp::Chmod(ChmodOp { mode: 0o600 })),
                }),
            ),
        ),
        (
            "file_chunk",
            env(
                11,
                Body::FileChunk(FileChunk {
                    data: b"content".to_vec().into(),
                    eof: true,
                }),
            ),
        ),
        (
            "file_result_stat",
            env(
                11,
                Body::FileResult(FileResult {
                    result: Some(FileResultKind::Stat(FileStat {
                        name: "a".into(),
                        file_type: FileType::Symlink as i32,
                        size: 10,
                        mode: 0o777,
                        uid: 1,
                        gid: 2,
                        mtime_secs: 1_700_000_000,
                        symlink_target: "b".into(),
                    })),
                }),
            ),
        ),
        (
            "file_result_listing",
            env(
                11,
                Body::FileResult(FileResult {
                    result: Some(FileResultKind::Listing(DirListing {
                        entries: vec![FileStat {
                            name: "x".into(),
                            file_type: FileType::Dir as i32,
                            ..Default::default()
                        }],
                    })),
                }),
            ),
        ),
        (
            "file_result_done",
            env(
                11,
                Body::FileResult(FileResult {
                    result: Some(FileResultKind::Done(FileDone { bytes: 99 })),
                }),
            ),
        ),
        (
            "error",
            env(
                13,
                Body::Error(ErrorReply {
                    kind: ErrorKind::OutsideRoot as i32,
                    errno: 18,
                    message: "escape".into(),
                }),
            ),
        ),
        (
            "shutdown",
            env(0, Body::Shutdown(ShutdownRequest { exit_code: 4 })),
        ),
        ("shutdown_ack", env(0, Body::ShutdownAck(ShutdownAck {}))),
        (
            "window",
            env(9, Body::Window(WindowUpdate { bytes: 65536 })),
        ),
    ]
}

fn golden_path(generation: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/generations/gen{generation}.txt"))
}

fn parse_golden(text: &str) -> BTreeMap<String, Vec<u8>> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, hex_bytes) = line.split_once(' ').expect("line is `name hex`");
            (
                name.to_owned(),
                hex::decode(hex_bytes.trim()).expect("valid hex"),
            )
        })
        .collect()
}

#[test]
fn generation_one_encodings_are_frozen() {
    let path = golden_path(1);
    let samples = generation_one_samples();
    if std::env::var("KRUNBOX_BLESS_GENERATION").as_deref() == Ok("1") && !path.exists() {
        let mut text =
            String::from("# Generation 1 wire encodings. Never edit: add a generation instead.\n");
        for (name, frame) in &samples {
            text.push_str(&format!("{name} {}\n", hex::encode(frame.encode_to_vec())));
        }
        std::fs::write(&path, text).expect("write golden file");
    }
    let golden =
        parse_golden(&std::fs::read_to_string(&path).expect("golden file for generation 1"));
    assert_eq!(
        golden.len(),
        samples.len(),
        "every generation-1 sample has a frozen encoding"
    );
    for (name, frame) in samples {
        let frozen = golden
            .get(name)
            .unwrap_or_else(|| panic!("no frozen encoding for {name}"));
        assert_eq!(&frame.encode_to_vec(), frozen, "encoding of {name} changed");
        let decoded = Envelope::decode(frozen.as_slice()).expect("frozen bytes decode");
        assert_eq!(
            decoded, frame,
            "frozen bytes of {name} decode to the same value"
        );
    }
}

#[test]
fn every_body_variant_has_a_frozen_sample() {
    let kinds: std::collections::BTreeSet<_> = generation_one_samples()
        .iter()
        .map(|(_, f)| f.kind())
        .collect();
    for kind in [
        "hello",
        "hello-ack",
        "ping",
        "pong",
        "exec",
        "exec-started",
        "stdin-data",
        "stdin-close",
        "output",
        "resize",
        "signal",
        "exit",
        "file",
        "file-chunk",
        "file-result",
        "error",
        "shutdown",
        "shutdown-ack",
        "window",
    ] {
        assert!(
            kinds.contains(kind),
            "generation 1 sample missing for {kind}"
        );
    }
}

#[test]
fn unknown_fields_from_a_newer_generation_are_ignored() {
    // A newer host may add fields; an old agent must still decode the rest.
    let mut bytes = Envelope::new(3, Body::Ping(Ping { nonce: 8 })).encode_to_vec();
    // Field 99, varint 1: unknown to generation 1.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    let decoded = Envelope::decode(bytes.as_slice()).expect("decodes despite unknown field");
    assert_eq!(decoded, Envelope::new(3, Body::Ping(Ping { nonce: 8 })));
}

#[test]
fn unknown_body_variant_decodes_as_none() {
    // Body tag 40 (length-delimited, empty): a variant added by a future generation.
    let mut bytes = vec![0x08, 0x07];
    bytes.extend_from_slice(&[0xc2, 0x02, 0x00]);
    let decoded = Envelope::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded.id, 7);
    assert!(decoded.body.is_none());
}
