//! `cargo xtask fuzz`: runs the libFuzzer target on the frame decoder for a bounded time.
//!
//! cargo-fuzz normally wants a nightly toolchain for its sanitizer flags; this machine has one
//! stable toolchain, so the run uses `--sanitizer none` (coverage-guided fuzzing still works,
//! the decoder is safe Rust) and `RUSTC_BOOTSTRAP=1` for the `-Z` flags cargo-fuzz passes.

use std::time::Duration;

use anyhow::Context;

use crate::workspace;

#[derive(clap::Args)]
pub struct Args {
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let fuzz_dir = workspace::root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join("frame_decoder");
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    seed_corpus(&corpus)?;
    let max_time = Duration::from_secs(args.seconds).as_secs().to_string();
    let mut cmd = workspace::cargo();
    cmd.current_dir(&fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--sanitizer", "none", "frame_decoder"])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={max_time}"))
        .arg("-max_len=2097152");
    workspace::run(&mut cmd)
        .context("fuzzing found a failure or could not run (is cargo-fuzz installed?)")
}

/// Seeds the corpus with a few valid frames so the fuzzer starts from real structure.
fn seed_corpus(dir: &std::path::Path) -> anyhow::Result<()> {
    use krunbox_protocol::frame::{BytesMut, Encoder, FrameCodec};
    use krunbox_protocol::messages::*;
    let seeds = [
        Envelope::new(
            0,
            Body::Hello(Hello {
                min_generation: 1,
                max_generation: 1,
                peer: "seed".into(),
            }),
        ),
        Envelope::new(
            1,
            Body::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            }),
        ),
        Envelope::new(
            1,
            Body::Output(OutputChunk {
                stream: 1,
                data: b"out".to_vec().into(),
                eof: false,
            }),
        ),
        Envelope::new(
            2,
            Body::File(FileRequest {
                root: "/".into(),
                path: "a".into(),
                op: Some(FileOp::Stat(StatOp {})),
            }),
        ),
    ];
    for (i, seed) in seeds.into_iter().enumerate() {
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(seed, &mut buf)?;
        let path = dir.join(format!("seed-{i}"));
        std::fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
