//! A guest root against the directories the host shares with it (virtio-fs): the store image
//! it boots from, read-only shares (submounts included) and read-write shares.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use krunbox_tests::{e2e, text};

const CLEANUP: Duration = Duration::from_secs(15);

/// Every entry under `dir`, recursively, with its metadata (symlinks not followed).
fn walk(dir: &Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.push((entry.path(), meta));
        }
    }
    out
}

#[test]
fn guest_root_cannot_poison_the_store_image_by_remounting_the_root_share() {
    let Some(k) = e2e("guest_root_cannot_poison_the_store_image_by_remounting_the_root_share")
    else {
        return;
    };
    let data = k.private_data_dir();
    // The attack: mount the root's virtio-fs tag again, make it writable, write into it.
    let attack = format!(
        "mkdir -p /mnt/root; mount -t virtiofs {tag} /mnt/root && echo MOUNTED; \
         mount -o remount,rw /mnt/root && echo REMOUNTED; \
         echo pwned > /mnt/root/poisoned && echo WROTE; \
         echo pwned >> /mnt/root/bin/busybox && echo APPENDED; \
         rm -f /mnt/root/etc/os-release && echo REMOVED; true",
        tag = krunbox_tests::root_share_tag()
    );
    let out = k
        .krunbox(["run", "--", "sh", "-c", &attack])
        .env("KRUNBOX_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let said = text(&out.stdout);
    // The guest's own mount flags were undone: only the host stands in the way.
    assert!(said.contains("MOUNTED\nREMOUNTED\n"), "{said}");
    assert!(
        !said.contains("WROTE") && !said.contains("APPENDED") && !said.contains("REMOVED"),
        "the guest changed the image: {said}"
    );
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "stderr: {}",
        text(&out.stderr)
    );
    // Nothing changed on the host, and the next sandbox of the image boots it unchanged.
    let store = data.path().join("store/rootfs/sha256");
    for (path, _) in walk(&store) {
        assert_ne!(path.file_name().unwrap(), "poisoned", "{}", path.display());
    }
    let again = k
        .krunbox([
            "run",
            "--",
            "sh",
            "-c",
            "cat /poisoned 2>/dev/null; . /etc/os-release; echo $ID",
        ])
        .env("KRUNBOX_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(text(&again.stdout), "krunbox\n", "{}", text(&again.stderr));
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn guest_root_cannot_write_a_read_only_share_or_its_submounts() {
    let Some(k) = e2e("guest_root_cannot_write_a_read_only_share_or_its_submounts") else {
        return;
    };
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("keep"), "kept\n").unwrap();
    let sub = share.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    // A submount inside the share (as a checkout on another filesystem would be): needs root
    // on the host to make; as a normal user the share itself is attacked.
    let mounted = nix::unistd::geteuid().is_root()
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "kbx-sub"])
            .arg(&sub)
            .status()
            .is_ok_and(|s| s.success());
    std::fs::write(sub.join("inner"), "inner\n").unwrap();
    let volume = format!("{}:/data:ro", share.path().display());
    let attack = "mount -o remount,rw /data && echo REMOUNTED; \
                  echo x > /data/new && echo WROTE; \
                  echo x > /data/keep && echo CHANGED; \
                  echo x > /data/sub/new && echo SUBWROTE; \
                  rm /data/sub/inner && echo SUBREMOVED; \
                  mkdir -p /mnt/d; mount -t virtiofs share1 /mnt/d && echo MOUNTED; \
                  echo x > /mnt/d/again && echo REMOUNTWROTE; true";
    let out = k.run(&["-v", &volume, "--", "sh", "-c", attack], b"");
    let said = text(&out.stdout);
    let host_after: Vec<String> = walk(share.path())
        .iter()
        .map(|(p, _)| p.strip_prefix(share.path()).unwrap().display().to_string())
        .collect();
    let inner = std::fs::read_to_string(sub.join("inner"));
    if mounted {
        let _ = std::process::Command::new("umount").arg(&sub).status();
    }
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(said.starts_with("REMOUNTED\n"), "{said}");
    for wrote in ["WROTE", "CHANGED", "SUBWROTE", "SUBREMOVED", "REMOUNTWROTE"] {
        assert!(!said.contains(wrote), "{wrote}: {said}");
    }
    let mut host_after = host_after;
    host_after.sort();
    assert_eq!(host_after, ["keep", "sub", "sub/inner"]);
    assert_eq!(inner.unwrap(), "inner\n");
    assert_eq!(
        std::fs::read_to_string(share.path().join("keep")).unwrap(),
        "kept\n"
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn guest_root_cannot_plant_setuid_root_files_or_device_nodes_in_a_writable_share() {
    let Some(k) =
        e2e("guest_root_cannot_plant_setuid_root_files_or_device_nodes_in_a_writable_share")
    else {
        return;
    };
    // libkrun serves shares in its VMM process with that process's identity and has no id
    // mapping: as root, files guest root creates stay root's (SECURITY.md, "Not promised").
    // What makes that an escalation is refused there too: setuid/setgid modes (seccomp) and
    // device nodes (no CAP_MKNOD), by `backend/krun/confine.rs`.
    let squashed = !(krunbox_tests::backend() == "krun" && nix::unistd::geteuid().is_root());
    let share = tempfile::Builder::new()
        .prefix("kbx-rw-")
        .tempdir_in("/tmp")
        .unwrap();
    // A developer's directory: owned by a normal user (when the test runs as root, uid 1000).
    let (owner, group) = if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(share.path(), Some(1000.into()), Some(1000.into())).unwrap();
        (1000, 1000)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    let volume = format!("{}:/s", share.path().display());
    let attack = "cd /s; \
                  cp /bin/busybox rootsh; chown 0:0 rootsh; chmod 4755 rootsh; \
                  cp /bin/busybox rootgrp; chown 0:0 rootgrp; chmod 2755 rootgrp; \
                  touch owned; chown 0:0 owned; chown 1:1 owned; \
                  mknod mem c 1 1 && echo MKNOD; \
                  mknod blk b 8 0 && echo MKBLK; \
                  ls -ln /s; true";
    let out = k.run(&["-u", "0", "-v", &volume, "--", "sh", "-c", attack], b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(!said.contains("MKNOD") && !said.contains("MKBLK"), "{said}");
    let entries = walk(share.path());
    assert!(
        entries.iter().any(|(p, _)| p.ends_with("rootsh")),
        "the guest could write the share at all: {said}"
    );
    for (path, meta) in &entries {
        let kind = meta.file_type();
        assert!(
            !kind.is_char_device() && !kind.is_block_device(),
            "device node {}",
            path.display()
        );
        if squashed {
            assert_eq!(
                meta.uid(),
                owner,
                "{} belongs to the share's owner on the host, whatever the guest asked",
                path.display()
            );
            assert_eq!(meta.gid(), group, "{}", path.display());
        } else {
            assert_eq!(
                meta.permissions().mode() & 0o6000,
                0,
                "libkrun lets no setuid or setgid bit through: {}",
                path.display()
            );
        }
        if meta.permissions().mode() & 0o4000 != 0 {
            assert_ne!(meta.uid(), 0, "setuid-root file {}", path.display());
        }
        if meta.permissions().mode() & 0o2000 != 0 {
            assert_ne!(meta.gid(), 0, "setgid-root file {}", path.display());
        }
    }
    k.assert_nothing_left(CLEANUP);
}
