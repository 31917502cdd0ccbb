//! The krunbox command line without booting a VM: help, argument errors, doctor.
//! (Booting tests live in the krunbox-tests crate; this file also makes `cargo test` build
//! the `krunbox` binary those tests run.)

use std::process::Command;

fn krunbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_krunbox"))
        .args(args)
        .env(
            "KRUNBOX_RUNTIME_DIR",
            std::env::temp_dir().join("krunbox-cli-test"),
        )
        .output()
        .expect("run krunbox")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_help_explains_every_option() {
    let out = krunbox(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--backend",
        "--env",
        "--workdir",
        "--cpus",
        "--memory",
        "--interactive",
        "--tty",
        "--rm",
        "--kernel",
        "--accel",
        "--boot-timeout",
        "ROOTFS_DIR",
        "COMMAND",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn a_rootfs_that_is_not_a_directory_is_refused_with_125() {
    let out = krunbox(&["run", "/nonexistent/rootfs", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/nonexistent/rootfs: not a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_command_is_a_usage_error() {
    let out = krunbox(&["run"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("COMMAND"), "{}", stderr(&out));
}

#[test]
fn an_empty_env_name_is_refused() {
    let out = krunbox(&["run", "-e", "=x", "/", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("empty variable name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_guest_agent_says_how_to_build_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_krunbox"))
        .args(["run", "/", "--", "true"])
        .env("KRUNBOX_GUEST_INIT", "/nonexistent/guest-init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/guest-init") && err.contains("cargo xtask build-init"),
        "{err}"
    );
}

#[test]
fn doctor_reports_each_backend_and_exits_0() {
    let out = krunbox(&["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("backend krun:"), "{report}");
    assert!(report.contains("backend qemu:"), "{report}");
    assert!(report.contains("KVM"), "{report}");
    assert!(report.contains("guest agent"), "{report}");
}

#[test]
fn the_krun_backend_on_a_host_that_cannot_run_it_says_why_with_125() {
    // This host class (CI: a nested kvm_pvm host) cannot run libkrun; where it can, the
    // backend is chosen and this test has nothing to check.
    let doctor = krunbox(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let Some(line) = report.lines().find(|l| l.starts_with("backend krun:")) else {
        panic!("no krun line in:\n{report}");
    };
    if !line.contains("unavailable") {
        eprintln!("libkrun is usable here ({line}); skipping");
        return;
    }
    let reason = line.split_once(" — ").map(|(_, r)| r).unwrap_or_default();
    assert!(!reason.is_empty(), "{line}");
    let out = krunbox(&["run", "--backend", "krun", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the krun backend is not available") && err.contains(reason),
        "{err}"
    );
}

#[test]
fn doctor_explains_the_krun_backend() {
    let out = krunbox(&["doctor"]);
    let report = String::from_utf8_lossy(&out.stdout);
    for needle in ["libkrun:", "libkrunfw (guest kernel)", "network: TSI"] {
        assert!(report.contains(needle), "{needle} missing from:\n{report}");
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            report.contains("KVM present but cannot run standard guests"),
            "{report}"
        );
        assert!(
            report.contains("`krunbox run --backend auto` uses: qemu"),
            "{report}"
        );
    }
}
