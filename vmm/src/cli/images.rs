//! Managing the image store: `krunbox pull`, `krunbox images`, `krunbox rmi`, `krunbox prune`.
//!
//! The store (`$DATA/store`) is shared by every krunbox process of the user; its own file
//! locks make these commands safe to run while sandboxes start and run (an image in use keeps
//! its unpacked tree until its last sandbox ends).

use std::io::IsTerminal;

use krunbox_image::platform::Platform;
use krunbox_image::source::{self, PullPolicy, Source};
use krunbox_image::store::{ImageRecord, PruneReport, Store, StoreError};

use super::table::{ago, human_size, print_with_header};
use crate::guest::rootfs::{open_store, pull_options, ImageOptions};
use krunbox_image::pull::PullOptions;

/// Download an image from a registry (or import a local OCI layout, OCI archive or
/// `docker save` tarball) into the image store.
///
/// Blobs already in the store are not downloaded again; every blob is checked against its
/// digest before it counts as present, so an interrupted pull can simply be run again.
/// Credentials come from KRUNBOX_REGISTRY_USERNAME/KRUNBOX_REGISTRY_PASSWORD (or
/// KRUNBOX_REGISTRY_TOKEN) for the registry named by KRUNBOX_REGISTRY_AUTH_FOR, else ~/.config/krunbox/auth.json or ~/.docker/config.json.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox pull alpine\n  krunbox pull --platform linux/arm64 127.0.0.1:5000/app:v1\n  krunbox pull alpine@sha256:<digest>\n  krunbox pull ./saved-image.tar"
)]
pub struct PullArgs {
    /// The platform to pick from multi-platform images, as OS/ARCH[/VARIANT]
    /// (default: linux and this host's architecture).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    pub platform: Option<Platform>,
    /// No progress bars, only the result.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image: a registry reference, an OCI layout or archive, or a `docker save` tarball.
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

/// List the images in the store.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print only image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full image IDs and manifest digests.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Remove images from the store, with the blobs and unpacked trees no other image uses.
///
/// A tree a running sandbox still uses is kept until `krunbox prune` runs after it ends.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Images to remove: names as `krunbox images` shows them, or (unique prefixes of) IDs.
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// Remove from the store everything no image references: blobs, unpacked trees no sandbox
/// uses, and leftovers of interrupted pulls.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

/// Why a store command failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// IMAGE names nothing usable.
    #[error(transparent)]
    Source(#[from] krunbox_image::source::SourceError),
    /// Pulling or importing.
    #[error(transparent)]
    Prepare(#[from] krunbox_image::source::PrepareError),
    /// A root filesystem directory is not an image.
    #[error("{0}: a root filesystem directory is used in place by `krunbox run`; there is nothing to pull")]
    NotAnImage(String),
    /// The pulled image cannot be unpacked (it was not kept).
    #[error("{image} cannot be unpacked, so it was not kept: {source}")]
    Unpack {
        /// The image.
        image: String,
        /// Why.
        source: StoreError,
    },
    /// Local failure.
    #[error("{0}")]
    Io(String),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

/// `krunbox pull`.
pub fn pull(args: &PullArgs) -> Result<i32, ImagesError> {
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let record = pull_image(&args.image, args.platform.clone(), progress, None)?;
    println!("{}", record.display_name());
    println!("ID: {}", record.id());
    println!("Manifest: {}", record.manifest);
    println!(
        "Platform: {}, {} layer(s), {}",
        record.platform,
        record.layers.len(),
        human_size(record.size)
    );
    Ok(0)
}

/// Pulls IMAGE (or imports a local layout or archive) into the store and unpacks it, always
/// asking the registry (`krunbox pull`, and `krunbox serve`'s pull, which takes `events`).
pub fn pull_image(
    image: &str,
    platform: Option<Platform>,
    progress: bool,
    events: Option<tokio::sync::mpsc::UnboundedSender<krunbox_image::pull::PullEvent>>,
) -> Result<ImageRecord, ImagesError> {
    let source = Source::parse(image)?;
    if matches!(source, Source::RootfsDir(_)) {
        return Err(ImagesError::NotAnImage(image.to_owned()));
    }
    let store = open_store::<ImagesError>()?;
    let options = PullOptions {
        events,
        ..pull_options(&ImageOptions {
            pull: PullPolicy::Always,
            platform: platform.clone(),
            progress,
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImagesError::Io(format!("cannot start the async runtime: {e}")))?;
    let record = runtime.block_on(async {
        match &source {
            Source::Registry(reference) => {
                Ok(krunbox_image::pull::pull(&store, reference, &options)
                    .await
                    .map_err(krunbox_image::source::PrepareError::from)?)
            }
            local => {
                let (store, local) = (store.clone(), local.clone());
                tokio::task::spawn_blocking(move || source::import_local(&store, &local, platform))
                    .await
                    .map_err(|e| ImagesError::Io(format!("import task failed: {e}")))?
                    .map_err(|e| ImagesError::Prepare(e.into()))
            }
        }
    })?;
    unpack_or_forget(&store, &record)?;
    Ok(record)
}

/// Unpacks a pulled image now, as `docker pull` does, so a layer the unpacker refuses (a
/// header bomb, too many entries, `..` paths) fails the pull; the image is then removed
/// again, with the blobs only it used, so nothing of it stays in the store.
fn unpack_or_forget(store: &Store, record: &ImageRecord) -> Result<(), ImagesError> {
    let Err(err) = store.rootfs_dir(record) else {
        return Ok(());
    };
    if let Err(cleanup) = store.remove_image(&record.name) {
        tracing::warn!(image = %record.name, %cleanup, "could not remove the image that failed to unpack");
    }
    Err(ImagesError::Unpack {
        image: record.display_name().to_owned(),
        source: err,
    })
}

/// `krunbox images`.
pub fn images(args: &ImagesArgs) -> Result<i32, ImagesError> {
    let store = open_store::<ImagesError>()?;
    let images = store.list_images()?;
    if args.quiet {
        for image in &images {
            println!("{}", short_id(image, args.no_trunc));
        }
        return Ok(0);
    }
    let rows = images
        .iter()
        .map(|image| {
            vec![
                image.display_name().to_owned(),
                short_id(image, args.no_trunc),
                image.platform.to_string(),
                ago(image.stored_at),
                human_size(image.size),
            ]
        })
        .collect();
    print_with_header(&["IMAGE", "ID", "PLATFORM", "STORED", "SIZE"], rows);
    Ok(0)
}

/// `krunbox rmi`.
pub fn rmi(args: &RmiArgs) -> Result<i32, ImagesError> {
    let store = open_store::<ImagesError>()?;
    let mut failed = false;
    for query in &args.images {
        match store.remove_image(query) {
            Ok((record, report)) => {
                println!("Untagged: {}", record.display_name());
                print_report(&report);
            }
            Err(err) => {
                eprintln!("krunbox: {err}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `krunbox prune`.
pub fn prune(_args: &PruneArgs) -> Result<i32, ImagesError> {
    let report = open_store::<ImagesError>()?.prune()?;
    print_report(&report);
    Ok(0)
}

fn print_report(report: &PruneReport) {
    for rootfs in &report.removed_rootfs {
        println!("Deleted unpacked image: {rootfs}");
    }
    for rootfs in &report.rootfs_in_use {
        println!("Kept (a sandbox uses it; run `krunbox prune` once it ends): {rootfs}");
    }
    println!(
        "Removed {} blob(s), {} unpacked image(s); freed {}",
        report.removed_blobs.len(),
        report.removed_rootfs.len(),
        human_size(report.freed_bytes)
    );
}

fn short_id(image: &ImageRecord, full: bool) -> String {
    if full {
        image.id().to_string()
    } else {
        image.id().hex().chars().take(12).collect()
    }
}
