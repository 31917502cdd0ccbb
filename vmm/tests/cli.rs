//! The krunbox command line without booting a VM: help, argument errors, doctor.
//! (Booting tests live in the krunbox-tests crate; this file also makes `cargo test` build
//! the `krunbox` binary those tests run.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

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
        "--user",
        "--entrypoint",
        "--pull",
        "--platform",
        "IMAGE",
        "COMMAND",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn a_path_that_does_not_exist_is_refused_with_125() {
    let out = krunbox(&["run", "/nonexistent/rootfs", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/nonexistent/rootfs: no such file or directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_command_and_no_image_cmd_is_refused_before_booting() {
    let out = krunbox(&["run", "/"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no command: the image has no Entrypoint or Cmd"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_user_of_the_image_is_refused() {
    let out = krunbox(&["run", "-u", "no-such-user-here", "/", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("unable to find user no-such-user-here"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pull_never_fails_for_an_image_not_in_the_store() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_krunbox"))
        .args([
            "run",
            "--pull",
            "never",
            "127.0.0.1:9/none/such:tag",
            "--",
            "true",
        ])
        .env("KRUNBOX_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(
            "image 127.0.0.1:9/none/such:tag is not in the store and pulling is disabled"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_empty_store_lists_no_images_and_rmi_names_what_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let store_cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_krunbox"))
            .args(args)
            .env("KRUNBOX_DATA_DIR", data.path())
            .output()
            .unwrap()
    };
    let out = store_cmd(&["images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "IMAGE   ID   PLATFORM   STORED   SIZE"
    );
    let out = store_cmd(&["rmi", "nothing:here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such image: nothing:here"),
        "{}",
        stderr(&out)
    );
    let out = store_cmd(&["pull", "/"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("nothing to pull"), "{}", stderr(&out));
    let out = store_cmd(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removed 0 blob(s)"));
    for command in ["pull", "images", "rmi", "prune"] {
        let out = store_cmd(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
    }
}

#[test]
fn an_empty_env_name_is_refused() {
    let out = krunbox(&["run", "-e", "=x", "/", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid environment variable \"=x\""),
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
    for needle in [
        "libkrun:",
        "libkrunfw (guest kernel)",
        "network: virtio-net to krunbox's gateway",
    ] {
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
