//! Feeds arbitrary bytes to the layer unpacker as a layer (plain, gzip or zstd by magic),
//! applied to a fresh root inside a scratch directory under low caps. Whatever it accepts or
//! refuses, it must not panic, nothing may appear outside the root, and the caps hold: no
//! more entries than allowed were applied, no more content bytes than allowed were written,
//! no path deeper than allowed exists.
#![no_main]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use krunbox_image::limits::UnpackLimits;
use krunbox_image::unpack::{unpack_layer_limited, UnpackStats};
use libfuzzer_sys::fuzz_target;

const LIMITS: UnpackLimits = UnpackLimits {
    // Small, so that an input writes little: the caps are the same code at any size.
    max_bytes: 64 << 10,
    max_entries: 64,
    max_depth: 8,
};

#[derive(Default)]
struct Survey {
    entries: u64,
    /// Content of distinct files (hard links share theirs).
    bytes: u64,
    deepest: usize,
    seen: HashSet<(u64, u64)>,
}

/// Walks what is below `dir`, never following a symlink.
fn survey(dir: &Path, depth: usize, totals: &mut Survey) {
    for entry in std::fs::read_dir(dir).expect("list unpacked dir") {
        let entry = entry.expect("entry");
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        totals.entries += 1;
        totals.deepest = totals.deepest.max(depth + 1);
        if meta.is_file() && totals.seen.insert((meta.dev(), meta.ino())) {
            totals.bytes += meta.len();
        }
        if meta.is_dir() {
            survey(&entry.path(), depth + 1, totals);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let result = unpack_layer_limited(data, &root, &LIMITS, &UnpackStats::default());
    let names: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("list scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("root")],
        "written outside the root"
    );
    let mut found = Survey::default();
    survey(&root, 0, &mut found);
    let (entries, bytes, depth) = (found.entries, found.bytes, found.deepest);
    // Hard links share content, so bytes on disk can only be at most what was written.
    assert!(bytes <= LIMITS.max_bytes, "{bytes} content bytes on disk");
    assert!(
        entries <= LIMITS.max_entries * LIMITS.max_depth as u64,
        "{entries} entries"
    );
    assert!(depth <= LIMITS.max_depth, "depth {depth}");
    if let Ok(stats) = result {
        assert!(stats.tar_entries <= LIMITS.max_entries);
        assert!(stats.content_bytes <= LIMITS.max_bytes);
    }
    // The root itself keeps the mode we gave it (an image's "./" entry is not applied).
    let mode = std::fs::metadata(&root).expect("root").mode() & 0o7777;
    assert!(mode & 0o700 == 0o700, "root mode {mode:o}");
});
