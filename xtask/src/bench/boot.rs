//! Boot → exec → exit: `krunbox run --backend qemu --accel tcg -- true` on the default image,
//! timed from spawn to exit, for Debian's cloud kernel (the QEMU backend's default) and for
//! krunbox's own kernel (`cargo xtask build-kernel`), side by side.
//!
//! TCG, not KVM: it is what our CI machines (nested `kvm_pvm`) run, and it is deterministic
//! enough to compare kernels. The first run of each kernel is reported on its own: it imports
//! the default image into the (private, fresh) store and builds the initramfs, which later
//! runs find cached.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::private::{built_kernel, PrivateKrunbox};
use super::table::{millis, percentile, Table};

pub fn run(runs: usize) -> anyhow::Result<()> {
    let krunbox = PrivateKrunbox::new()?;
    let own = built_kernel();
    let mut kernels = vec![("Debian cloud kernel (default)".to_owned(), None)];
    if let Some(path) = &own {
        kernels.push((
            format!("own kernel ({})", path.display()),
            Some(path.clone()),
        ));
    }
    let mut table = Table::new(&["kernel", "first run", "median", "p90", "min"]);
    for (name, kernel) in kernels {
        let first = boot(&krunbox, kernel.as_deref())?;
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(boot(&krunbox, kernel.as_deref())?);
        }
        samples.sort();
        table.row(vec![
            name,
            millis(first),
            millis(percentile(&samples, 50.0)),
            millis(percentile(&samples, 90.0)),
            millis(samples.first().copied().unwrap_or_default()),
        ]);
    }
    if own.is_none() {
        table.row(vec![
            "own kernel: not built (cargo xtask build-kernel)".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    table.print(&format!(
        "krunbox run --backend qemu --accel tcg -- true: boot -> exec -> exit, {runs} runs after the first"
    ));
    Ok(())
}

/// One `krunbox run -- true`, spawn to exit.
fn boot(krunbox: &PrivateKrunbox, kernel: Option<&std::path::Path>) -> anyhow::Result<Duration> {
    let mut cmd = krunbox.command(["run", "--backend", "qemu", "--accel", "tcg"]);
    if let Some(kernel) = kernel {
        cmd.arg("--kernel").arg(kernel);
    }
    cmd.args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = run_output(&mut cmd)?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "krunbox run -- true failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

fn run_output(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    cmd.output().with_context(|| format!("run {cmd:?}"))
}
