//! `cargo xtask fuzz`: runs every libFuzzer target in `fuzz/` for a bounded time each.
//!
//! cargo-fuzz normally wants a nightly toolchain for its sanitizer flags; this machine has one
//! stable toolchain, so the run uses `--sanitizer none` (coverage-guided fuzzing still works,
//! the decoder is safe Rust) and `RUSTC_BOOTSTRAP=1` for the `-Z` flags cargo-fuzz passes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::workspace;

#[derive(clap::Args)]
pub struct Args {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fuzz only these targets (default: every target `cargo fuzz list` names).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

/// Runs each fuzz target for `--seconds` and prints how many inputs each one tried.
///
/// A target's corpus lives in `fuzz/corpus/<target>/` (not committed) and starts from the
/// committed seeds in `fuzz/seeds/<target>/`; the frame decoder's seeds are encoded here.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let fuzz_dir = workspace::root().join("fuzz");
    let targets = if args.targets.is_empty() {
        list_targets(&fuzz_dir)?
    } else {
        args.targets.clone()
    };
    let mut report = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        copy_seeds(&fuzz_dir.join("seeds").join(target), &corpus)?;
        if target == "frame_decoder" {
            seed_frames(&corpus)?;
        }
        let runs = fuzz_one(&fuzz_dir, target, &corpus, args.seconds)?;
        report.push((target.clone(), runs));
    }
    println!("fuzz: inputs tried per target in {} s each", args.seconds);
    for (target, runs) in report {
        println!("  {target:<24} {runs:>12}  0 crashes");
    }
    Ok(())
}

fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let output = workspace::cargo()
        .current_dir(fuzz_dir)
        .args(["fuzz", "list"])
        .output()
        .context("cannot run `cargo fuzz list` (is cargo-fuzz installed?)")?;
    if !output.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// A RAM-backed directory for the targets' scratch files, when the host has one: the layer
/// unpacker writes real files for every input, nine times faster on tmpfs than on disk.
const SCRATCH_TMPFS: &str = "/dev/shm";

/// The largest input libFuzzer makes for `target`: what the parser can be given at most
/// (an HTTP header, a token answer, a layer's entries), else 2 MiB (frames, manifests).
fn max_len(target: &str) -> usize {
    match target {
        // Registries' WWW-Authenticate values are short; token answers are read up to
        // 256 KiB, and their JSON parser is serde's.
        "registry_auth" => 64 * 1024,
        // A layer's entries are applied one by one, whatever the layer's size: 256 KiB holds
        // many entries, long PAX/GNU names and whiteouts, and keeps the rate from falling
        // (at 2 MiB it fell from 9,300 to 2,300 inputs a second as the corpus grew). The
        // image-wide caps are attacked by image/tests/hostile.rs with multi-GiB layers.
        "layer_unpack" => 256 * 1024,
        _ => 2 * 1024 * 1024,
    }
}

/// Fuzzes one target; returns the number of inputs libFuzzer ran. A crash fails the run.
fn fuzz_one(fuzz_dir: &Path, target: &str, corpus: &Path, seconds: u64) -> anyhow::Result<u64> {
    let max_time = Duration::from_secs(seconds).as_secs().to_string();
    let mut cmd: Command = workspace::cargo();
    if Path::new(SCRATCH_TMPFS).is_dir() {
        cmd.env("TMPDIR", SCRATCH_TMPFS);
    }
    cmd.current_dir(fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(corpus)
        .arg("--")
        .arg(format!("-max_total_time={max_time}"))
        .arg(format!("-max_len={}", max_len(target)))
        .arg("-print_final_stats=1");
    let rendered = format!("{cmd:?}");
    let output = cmd
        .stdout(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {rendered}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        bail!("fuzz target {target} found a failure or could not run ({rendered})");
    }
    // libFuzzer's final stats: `stat::number_of_executed_units: N`.
    let runs = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok(runs)
}

/// Copies committed seed files into the corpus (a missing seed folder means no seeds).
fn copy_seeds(seeds: &Path, corpus: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(seeds) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("read {}", seeds.display()))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let to = corpus.join(entry.file_name());
            std::fs::copy(entry.path(), &to)
                .with_context(|| format!("copy seed to {}", to.display()))?;
        }
    }
    Ok(())
}

/// Seeds the frame decoder's corpus with a few valid frames so the fuzzer starts from real structure.
fn seed_frames(dir: &std::path::Path) -> anyhow::Result<()> {
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
