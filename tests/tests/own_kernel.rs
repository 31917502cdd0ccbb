//! krunbox's own guest kernel (`cargo xtask build-kernel`, kernel-config/) booted through
//! `krunbox run --kernel` under the QEMU backend (TCG here): every driver is built in, so the
//! initramfs holds only guest-init and nothing is loaded as a module.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use krunbox_tests::{backend, built_kernel, debian_kernel_data_dir, e2e, text, user_data_dir};

const CLEANUP: std::time::Duration = std::time::Duration::from_secs(15);

/// A root filesystem directory of busybox and its applets.
fn busybox_rootfs(root: &Path) {
    let busybox = krunbox_tests::busybox();
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "uname", "awk", "test", "wc", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

#[test]
fn the_built_kernel_runs_commands_over_vsock_with_a_writable_virtiofs_root_and_no_modules() {
    let test =
        "the_built_kernel_runs_commands_over_vsock_with_a_writable_virtiofs_root_and_no_modules";
    let Some(k) = e2e(test) else {
        return;
    };
    let Some(kernel) = built_kernel(test) else {
        return;
    };
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());
    std::fs::write(rootfs.path().join("from-host"), "written on the host\n").unwrap();

    // The guest network's card (virtio-net, built in) reaches a host server through
    // krunbox's gateway.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in server.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nvirtio-net ok\n",
            );
        }
    });
    let allow = format!("127.0.0.1:{port}");

    // The command itself arrives over vsock (the agent's only channel) and its output
    // returns over it; the root filesystem is the virtio-fs share of `rootfs`.
    let script = format!(
        "uname -r; \
                  cat /from-host; \
                  echo written in the guest > /from-guest; \
                  awk '$2 == \"/\" {{ print \"root:\", $3 }}' /proc/mounts; \
                  if test -e /proc/modules; then echo modules: $(wc -l < /proc/modules); else echo modules: absent; fi; \
                  awk '$2 == \"/sys/fs/cgroup\" {{ print \"cgroup:\", $3 }}' /proc/mounts; \
                  test -e /proc/config.gz && echo config.gz: present; \
                  timeout 30 wget -q -O- http://10.0.2.2:{port}/"
    );
    let out = k.run(
        &[
            "--kernel",
            kernel.image.to_str().unwrap(),
            "--allow-net",
            &allow,
            rootfs.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(kernel.release.as_str()),
        "not the built kernel: {stdout}"
    );
    assert!(
        lines.contains(&"written on the host"),
        "host file not readable over virtio-fs: {stdout}"
    );
    assert!(lines.contains(&"root: virtiofs"), "{stdout}");
    assert!(
        lines.contains(&"modules: absent") || lines.contains(&"modules: 0"),
        "modules loaded: {stdout}"
    );
    assert!(lines.contains(&"config.gz: present"), "{stdout}");
    assert!(lines.contains(&"cgroup: cgroup2"), "{stdout}");
    assert!(lines.contains(&"virtio-net ok"), "no network: {stdout}");
    assert_eq!(
        std::fs::read_to_string(rootfs.path().join("from-guest")).unwrap(),
        "written in the guest\n",
        "the guest's write did not reach the host"
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn the_built_vmlinux_boots_through_its_pvh_entry() {
    let test = "the_built_vmlinux_boots_through_its_pvh_entry";
    let Some(k) = e2e(test) else {
        return;
    };
    let Some(kernel) = built_kernel(test) else {
        return;
    };
    // QEMU starts an ELF kernel at its PVH note (there is no bzImage setup code in vmlinux);
    // the same file is what libkrun loads as format 1 (ELF).
    let out = k.run(
        &[
            "--kernel",
            kernel.vmlinux.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "uname -r; test -e /proc/modules || echo no-modules",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}\nno-modules\n", kernel.release)
    );
    k.assert_nothing_left(CLEANUP);
}

/// The release of krunbox's own kernel installed in the user's data directory (the test
/// command installs the build with `krunbox kernel install`).
fn installed_release() -> Option<String> {
    let own = user_data_dir().join("kernels/krunbox");
    let release = std::fs::read_to_string(own.join("current")).ok()?;
    let release = release.trim().to_owned();
    own.join(&release)
        .join("vmlinux")
        .is_file()
        .then_some(release)
}

#[test]
fn the_installed_kernel_is_the_qemu_default_and_debian_s_the_fallback() {
    let test = "the_installed_kernel_is_the_qemu_default_and_debian_s_the_fallback";
    let Some(k) = e2e(test) else {
        return;
    };
    let Some(release) = installed_release() else {
        assert!(
            std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
            "KRUNBOX_REQUIRE_E2E is set but krunbox's own kernel is not installed (`krunbox kernel install .krunbox-cache/kernel/x86_64`)"
        );
        eprintln!("SKIPPED {test}: krunbox's own kernel is not installed");
        return;
    };
    let uname = |data: Option<&Path>| {
        let mut cmd = k.krunbox([
            "run",
            "--",
            "sh",
            "-c",
            "uname -r; cat /proc/modules 2>/dev/null | wc -l",
        ]);
        if let Some(data) = data {
            cmd.env("KRUNBOX_DATA_DIR", data);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let mut lines = stdout.lines().map(str::to_owned);
        let kernel = lines.next().unwrap_or_default();
        let modules: usize = lines
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        (kernel, modules)
    };
    let (kernel, modules) = uname(None);
    if backend() == "krun" {
        // libkrun keeps libkrunfw's kernel (TSI needs its patches); ours only with --kernel.
        assert_ne!(
            kernel, release,
            "libkrun booted krunbox's kernel by default"
        );
        return;
    }
    assert_eq!(
        kernel, release,
        "the QEMU default is not the installed kernel"
    );
    assert_eq!(modules, 0, "krunbox's kernel loads no modules");
    let doctor = k.krunbox(["doctor"]).output().unwrap();
    assert!(
        text(&doctor.stdout).contains(&format!("krunbox's own {release}")),
        "{}",
        text(&doctor.stdout)
    );

    let (debian_only, abi) = debian_kernel_data_dir();
    let (kernel, modules) = uname(Some(debian_only.path()));
    assert_eq!(kernel, abi, "without an own kernel, Debian's boots");
    assert!(modules > 0, "Debian's kernel runs on the modules it loads");
    k.assert_nothing_left(CLEANUP);
}
