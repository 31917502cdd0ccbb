//! Images: krunbox-image against the usual tools on the same bytes.
//!
//! A two-layer test image is made from host files (a sorted walk of /usr/share then /usr/lib,
//! cut at a byte budget: thousands of small files and some large ones, like a distribution
//! layer), gzip'd by GNU tar, written as an OCI layout and pushed to a throwaway local
//! registry ([`LocalRegistry`]). Then, each median of N runs:
//!
//! - unpack: krunbox-image's `unpack_layer_file` of both layers into a fresh directory (the
//!   `unpack_layers` example, release build), against `tar -xzf` of the same blobs (GNU tar,
//!   gzip in a second process) into another;
//! - pull: `krunbox pull` (release) into a fresh store, against
//!   `skopeo copy docker://… oci:DIR` from the same registry. Neither unpacks: both download,
//!   verify and store the blobs.
//!
//! The registry and every directory are dropped (killed, removed) on the way out, error or not.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use krunbox_image::auth::Credentials;
use krunbox_image::config::{ImageConfig, ImageConfigFile, RootFs};
use krunbox_image::digest::{Digest, Hasher};
use krunbox_image::layout::LayoutWriter;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::manifest::{OCI_CONFIG, OCI_LAYER_GZIP};
use krunbox_image::platform::Platform;
use krunbox_image::push::push_layout;
use krunbox_image::reference::Reference;
use krunbox_image::unpack::decompress;

use super::table::{millis, percentile, rate, ratio, Table};
use crate::workspace;

/// Where the layers' files come from, walked in this order.
const SOURCES: &[&str] = &["/usr/share", "/usr/lib"];
/// Bytes of file content in the first layer, then in the second.
const LAYER_BUDGETS: [u64; 2] = [64 << 20, 16 << 20];
/// The tag in the layout and in the registry.
const TAG: &str = "v1";

/// One gzip layer blob and what is inside it.
struct Layer {
    blob: PathBuf,
    compressed: u64,
    uncompressed: u64,
    diff_id: Digest,
    entries: usize,
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    // Release builds: hashing and inflating are most of the work, and debug builds of sha2
    // and miniz_oxide are several times slower than what ships.
    let krunbox = workspace::release_krunbox()?;
    workspace::run(workspace::cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "krunbox-image",
        "--example",
        "unpack_layers",
    ]))?;
    let unpacker = workspace::target_dir().join("release/examples/unpack_layers");
    let scratch = tempfile::Builder::new()
        .prefix("krunbox-bench-images-")
        .tempdir()
        .context("create a scratch directory")?;
    let layers = make_layers(scratch.path())?;
    let layout = scratch.path().join("layout");
    write_layout(&layout, &layers)?;
    let registry =
        LocalRegistry::start(&LocalRegistryOptions::default()).context("start docker-registry")?;
    let reference = Reference::parse(&format!("{}/bench/usr:{TAG}", registry.address()))
        .context("the benchmark image's reference")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime
        .block_on(push_layout(
            &layout,
            Some(TAG),
            &reference,
            &Credentials::Anonymous,
        ))
        .with_context(|| format!("push the benchmark image to {reference}"))?;

    let entries: usize = layers.iter().map(|l| l.entries).sum();
    let uncompressed: u64 = layers.iter().map(|l| l.uncompressed).sum();
    let compressed: u64 = layers.iter().map(|l| l.compressed).sum();
    let what = format!(
        "2 layers, {entries} entries, {:.1} MB of tar, {:.1} MB gzip'd",
        uncompressed as f64 / 1e6,
        compressed as f64 / 1e6
    );

    let (ours, tar) = measure_unpack(&unpacker, scratch.path(), &layers, runs)?;
    let mut table = Table::new(&["unpack", "median", "MB/s of tar", "time ratio"]);
    table.row(vec![
        "krunbox-image (unpack_layers, release)".into(),
        millis(ours),
        rate(uncompressed, ours),
        ratio(ours.as_secs_f64(), tar.as_secs_f64()),
    ]);
    table.row(vec![
        "GNU tar -xzf".into(),
        millis(tar),
        rate(uncompressed, tar),
        "1.00x".into(),
    ]);
    table.print(&format!("Layer unpack, median of {runs} ({what})"));

    let (ours, skopeo) = measure_pull(&krunbox, scratch.path(), &reference, runs)?;
    let mut table = Table::new(&["pull", "median", "MB/s of blobs", "time ratio"]);
    table.row(vec![
        "krunbox pull (fresh store, release)".into(),
        millis(ours),
        rate(compressed, ours),
        ratio(ours.as_secs_f64(), skopeo.as_secs_f64()),
    ]);
    table.row(vec![
        "skopeo copy (to oci:DIR)".into(),
        millis(skopeo),
        rate(compressed, skopeo),
        "1.00x".into(),
    ]);
    table.print(&format!(
        "Pull from a local docker-registry, median of {runs} ({what})"
    ));
    Ok(())
}

/// Both layers, gzip'd by GNU tar from consecutive stretches of the source walk.
fn make_layers(scratch: &Path) -> anyhow::Result<Vec<Layer>> {
    let mut files = Vec::new();
    let mut wanted: u64 = LAYER_BUDGETS.iter().sum();
    for source in SOURCES {
        walk(Path::new(source), &mut files, &mut wanted)
            .with_context(|| format!("list the files under {source}"))?;
    }
    let mut rest = files.as_slice();
    let mut layers = Vec::new();
    for (index, budget) in LAYER_BUDGETS.iter().enumerate() {
        let mut bytes = 0;
        let taken = rest
            .iter()
            .take_while(|(_, size)| {
                let within = bytes < *budget;
                bytes += size;
                within
            })
            .count();
        if taken == 0 {
            bail!("not enough files under {SOURCES:?} for layer {}", index + 1);
        }
        let (mine, later) = rest.split_at(taken);
        rest = later;
        layers.push(make_layer(scratch, index, mine)?);
    }
    Ok(layers)
}

/// Regular files, directories and symlinks under `dir` (itself first, then sorted, depth
/// first), each with its content size, until `wanted` bytes of content are listed;
/// unreadable directories are left out.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>, wanted: &mut u64) -> std::io::Result<()> {
    if *wanted == 0 {
        return Ok(());
    }
    out.push((dir.to_owned(), 0));
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if *wanted == 0 {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let _ = walk(&path, out, wanted);
        } else if meta.is_file() {
            *wanted = wanted.saturating_sub(meta.len());
            out.push((path, meta.len()));
        } else if meta.is_symlink() {
            out.push((path, 0));
        }
    }
    Ok(())
}

/// `tar -czf` of exactly `files` (relative to /, parents listed before children).
fn make_layer(scratch: &Path, index: usize, files: &[(PathBuf, u64)]) -> anyhow::Result<Layer> {
    let mut list = String::new();
    // The parents of the first entry, so each layer is a tree on its own.
    if let Some((first, _)) = files.first() {
        let mut parents: Vec<&Path> = first.ancestors().skip(1).collect();
        parents.reverse();
        for parent in parents.iter().filter(|p| p.parent().is_some()) {
            list.push_str(&relative(parent));
            list.push('\n');
        }
    }
    for (path, _) in files {
        list.push_str(&relative(path));
        list.push('\n');
    }
    let list_path = scratch.join(format!("layer{index}.list"));
    std::fs::write(&list_path, &list).context("write the layer's file list")?;
    let blob = scratch.join(format!("layer{index}.tar.gz"));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&blob)
        .args(["-C", "/", "--no-recursion", "--verbatim-files-from", "-T"])
        .arg(&list_path)
        .stderr(Stdio::null())
        .status()
        .context("run tar -czf")?;
    // 1: some file changed while being read; the archive is still usable.
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("tar -czf {} failed with {status}", blob.display());
    }
    let file = std::fs::File::open(&blob).with_context(|| format!("open {}", blob.display()))?;
    let compressed = file.metadata()?.len();
    let mut reader = decompress(file).context("read the layer's gzip")?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).context("decompress the layer")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let (diff_id, uncompressed) = hasher.finish();
    Ok(Layer {
        blob,
        compressed,
        uncompressed,
        diff_id,
        entries: list.lines().count(),
    })
}

fn relative(path: &Path) -> String {
    path.strip_prefix("/")
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The OCI layout of the test image, tagged [`TAG`].
fn write_layout(dir: &Path, layers: &[Layer]) -> anyhow::Result<()> {
    let mut writer = LayoutWriter::create(dir).context("create the OCI layout")?;
    let mut descriptors = Vec::new();
    for layer in layers {
        let bytes =
            std::fs::read(&layer.blob).with_context(|| format!("read {}", layer.blob.display()))?;
        descriptors.push(writer.add_blob(OCI_LAYER_GZIP, &bytes)?);
    }
    let platform = Platform::host_default();
    let config = ImageConfigFile {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: Some(ImageConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
    };
    let config = writer.add_blob(OCI_CONFIG, &serde_json::to_vec(&config)?)?;
    let manifest = writer.add_manifest(&config, &descriptors, Some(&platform))?;
    writer.tag(&manifest, TAG);
    writer.finish().context("write the layout's index.json")?;
    Ok(())
}

/// Medians of unpacking every layer into a fresh directory: krunbox-image, then GNU tar.
fn measure_unpack(
    unpacker: &Path,
    scratch: &Path,
    layers: &[Layer],
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut ours = Vec::with_capacity(runs);
    let mut tar = Vec::with_capacity(runs);
    for i in 0..runs {
        let dir = fresh_dir(scratch, &format!("unpack-ours-{i}"))?;
        settle()?;
        let started = Instant::now();
        let mut unpack = Command::new(unpacker);
        unpack
            .arg(&dir)
            .args(layers.iter().map(|l| &l.blob))
            .stdout(Stdio::null());
        workspace::run(&mut unpack)?;
        ours.push(started.elapsed());

        let dir = fresh_dir(scratch, &format!("unpack-tar-{i}"))?;
        settle()?;
        let started = Instant::now();
        for layer in layers {
            workspace::run(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(&layer.blob)
                    .arg("-C")
                    .arg(&dir),
            )?;
        }
        tar.push(started.elapsed());
    }
    Ok((median(ours), median(tar)))
}

/// Medians of pulling the image into a fresh directory: `krunbox pull` (a private data
/// directory, so a fresh store), then `skopeo copy`.
fn measure_pull(
    krunbox: &Path,
    scratch: &Path,
    reference: &Reference,
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut ours = Vec::with_capacity(runs);
    let mut skopeo = Vec::with_capacity(runs);
    for i in 0..runs {
        let dir = fresh_dir(scratch, &format!("data-{i}"))?;
        settle()?;
        let started = Instant::now();
        workspace::run(
            Command::new(krunbox)
                .args(["pull", "--quiet"])
                .arg(reference.to_string())
                .env("KRUNBOX_DATA_DIR", &dir)
                .stdout(Stdio::null()),
        )?;
        ours.push(started.elapsed());

        let dir = scratch.join(format!("skopeo-{i}"));
        settle()?;
        let started = Instant::now();
        workspace::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:{TAG}", dir.display()))
                .stdout(Stdio::null()),
        )
        .context("skopeo copy (apt-get install skopeo)")?;
        skopeo.push(started.elapsed());
    }
    Ok((median(ours), median(skopeo)))
}

/// Writes back what earlier steps left dirty (the layers, the registry's copy, the last
/// run's tree), so a timed step does not pay for the one before it. Trees are kept until the
/// end for the same reason: removing thousands of files between runs makes the next one pay
/// for it (on ext4 mounted with `discard`, several times over).
fn settle() -> anyhow::Result<()> {
    workspace::run(&mut Command::new("sync"))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 50.0)
}

fn fresh_dir(scratch: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = scratch.join(name);
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
