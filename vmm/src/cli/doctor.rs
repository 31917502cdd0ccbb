//! `krunbox doctor`: what this host can run, per backend, and why.

use crate::backend;

/// Prints the report; always exit code 0 (it is a diagnosis, not a test).
pub fn run() -> i32 {
    let mut usable = Vec::new();
    for backend in backend::all() {
        let availability = backend.availability();
        let (mark, detail) = match &availability {
            backend::Availability::Available(detail) => ("ok", detail.as_str()),
            backend::Availability::Unavailable(reason) => ("unavailable", reason.as_str()),
        };
        println!("backend {}: {mark} — {detail}", backend.kind());
        for check in backend.checks() {
            println!(
                "  [{}] {}: {}",
                if check.ok { "ok" } else { "--" },
                check.what,
                check.detail
            );
        }
        if availability.is_available() {
            usable.push(backend.kind());
        }
    }
    println!("common:");
    match crate::guest::agent::locate() {
        Ok(path) => println!("  [ok] guest agent: {}", path.display()),
        Err(err) => println!("  [--] guest agent: {err}"),
    }
    match crate::paths::data_dir() {
        Ok(data) => {
            let default_image = data.join("images/default/rootfs");
            if default_image.join("bin/busybox").is_file() {
                println!("  [ok] default image: {}", default_image.display());
            } else {
                match crate::paths::find_program("busybox") {
                    Some(busybox) => println!(
                        "  [ok] default image: built on first use from {} at {}",
                        busybox.display(),
                        default_image.display()
                    ),
                    None => println!("  [--] default image: needs busybox-static to be built"),
                }
            }
            println!("  data dir: {}", data.display());
            host_cas_in_images();
        }
        Err(err) => println!("  [--] data dir: {err}"),
    }
    let runtime = crate::paths::runtime_root();
    match crate::private_dir::ensure(&runtime, crate::paths::RUNTIME_SETTING) {
        Ok(_) => println!("  runtime dir: {}", runtime.display()),
        Err(err) => println!("  [--] runtime dir: {err}"),
    }
    match (usable.first(), usable.len()) {
        (Some(first), _) => println!("`krunbox run --backend auto` uses: {first}"),
        (None, _) => println!("no backend can boot guests on this host"),
    }
    0
}

/// For each unpacked image in the store: the host's CAs its trust store lacks (a host that
/// intercepts TLS has its proxy's CA there, and the guest needs `--host-ca`).
fn host_cas_in_images() {
    let Ok(store) = krunbox_image::store::Store::open_default() else {
        return;
    };
    let Ok(images) = store.list_images() else {
        return;
    };
    for image in images {
        let rootfs = store.rootfs_path(&image);
        if !rootfs.is_dir() {
            continue;
        }
        match crate::guest::host_ca::missing_in(&rootfs) {
            Ok((_, _, 0)) => {
                println!("  [ok] host CAs: {} trusts them all", image.display_name())
            }
            Ok((_, 0, _)) => println!(
                "  [--] host CAs: {} has no CA bundle; give it --host-ca for TLS",
                image.display_name()
            ),
            Ok((host, _, missing)) => println!(
                "  [!!] host CAs: {missing} of the host's {host} are not in {}'s trust store; \
                 give it --host-ca if TLS through this host's proxy fails",
                image.display_name()
            ),
            Err(err) => println!("  [--] host CAs: {err}"),
        }
    }
}
