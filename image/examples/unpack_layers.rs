//! `unpack_layers ROOT BLOB...`: applies layer blobs in order onto the existing directory ROOT
//! with [`krunbox_image::unpack`], as the store does when it builds an image's rootfs. Built in
//! release by `cargo xtask bench --suite images`, which times it against `tar -xzf`.

use std::path::PathBuf;
use std::process::ExitCode;

use krunbox_image::limits::UnpackLimits;
use krunbox_image::unpack::{unpack_layer_file, UnpackStats};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(root) = args.next() else {
        eprintln!("usage: unpack_layers ROOT BLOB...");
        return ExitCode::from(2);
    };
    let limits = match UnpackLimits::from_env() {
        Ok(limits) => limits,
        Err(err) => {
            eprintln!("unpack_layers: {err}");
            return ExitCode::from(2);
        }
    };
    let mut total = UnpackStats::default();
    for blob in args {
        match unpack_layer_file(&blob, &root, &limits, &total) {
            Ok(stats) => total += stats,
            Err(err) => {
                eprintln!("unpack_layers: {}: {err}", blob.display());
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{} entries, {} bytes", total.entries, total.bytes);
    ExitCode::SUCCESS
}
