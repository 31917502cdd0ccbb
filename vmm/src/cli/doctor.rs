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
    match crate::guest_init::locate() {
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
