//! Sets `cfg(krunbox_libkrun)` where the libkrun backend is built: the targets for which
//! Cargo.toml links libkrun (Linux, and macOS on Apple silicon). Keep the two in step.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(krunbox_libkrun)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" || (os == "macos" && arch == "aarch64") {
        println!("cargo::rustc-cfg=krunbox_libkrun");
    }
}
